"""Count parameters, FLOPs and bytes moved per module of a QTensorFormer.

Counts follow what this implementation executes, not an idealised kernel:
- a multiply-add is 2 FLOPs; a transcendental (cos, sin, exp, log, erf) is TRANSCENDENTAL_FLOPS;
- with the router on, every token runs both attention paths and the gate mixes them, so
  both are counted (a gathered, per-route execution would cost less; this one does not);
- adaptive ranks mask TT bond channels rather than skipping them, so TT layers cost their
  full rank;
- attention scores are counted for every (query, key) pair in the window, as the
  unfused masked kernels compute them;
- bytes moved = weights read once per pass + each layer's input and output activations
  + the KV cache read while decoding, all float32. Caches hide some of this on a CPU:
  the figure is the DRAM traffic of a cache-less machine, an upper bound.

Parts: embedding, quantum_encoder (encoder + router), attention (projections, QKSAM,
scores), ffn, head (final norm + LM head).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from qtf_edge.kan import BSplineActivation
from qtf_edge.model.qtensorformer import QTensorFormer
from qtf_edge.quantum import FoldedCircuit
from qtf_edge.quantum.jacobi import SWEEPS as JACOBI_SWEEPS
from qtf_edge.tt import TTEmbedding, TTLinear

BYTES_PER_VALUE = 4  # float32
TRANSCENDENTAL_FLOPS = 20  # assumption: a vectorised libm cos/exp costs ~10-30 FLOP-equivalents
GELU_FLOPS = TRANSCENDENTAL_FLOPS + 4
SOFTMAX_FLOPS = TRANSCENDENTAL_FLOPS + 3  # max, subtract, exp, sum, divide per score
LAYERNORM_FLOPS = 8  # mean, variance, normalise, scale, shift per value
EIGVALSH_FLOPS_PER_DIM_CUBED = 10  # assumption: symmetric tridiagonalisation + QR, small n
PARTS = ("embedding", "quantum_encoder", "attention", "ffn", "head")


@dataclass(frozen=True)
class Cost:
    params: int = 0
    flops: float = 0.0
    bytes_moved: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.params + other.params, self.flops + other.flops,
                    self.bytes_moved + other.bytes_moved)


def total(costs: Mapping[str, Cost]) -> Cost:
    return sum(costs.values(), Cost())


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _weights(*modules: nn.Module | None) -> Cost:
    """Parameters of these modules, each read once per pass."""
    params = sum(count_params(m) for m in modules if m is not None)
    return Cost(params, 0.0, BYTES_PER_VALUE * params)


def _compute(flops: float, values_moved: float) -> Cost:
    return Cost(0, flops, BYTES_PER_VALUE * values_moved)


def linear_compute(layer: nn.Module, n_tokens: int) -> Cost:
    """FLOPs and input/output traffic of a dense or TT projection (weights not included)."""
    if isinstance(layer, TTLinear):
        flops = layer.flops(n_tokens)
    else:
        flops = 2 * layer.in_features * layer.out_features * n_tokens
    if getattr(layer, "bias", None) is not None:
        flops += layer.out_features * n_tokens
    return _compute(flops, n_tokens * (layer.in_features + layer.out_features))


def layernorm_compute(width: int, n_tokens: int) -> Cost:
    return _compute(LAYERNORM_FLOPS * n_tokens * width, 2 * n_tokens * width)


def circuit_compute(circuit: nn.Module, n_states: int) -> Cost:
    """Simulating n_states circuits: angle encoding (one cos and sin per qubit, a Kronecker
    product), one (2**n x 2**n) matmul with the variational unitary, and building that
    unitary once per call (n_layers Kronecker products and matmuls; none once folded)."""
    n_qubits, dim = circuit.n_qubits, 2 ** circuit.n_qubits
    n_layers = 0 if isinstance(circuit, FoldedCircuit) else circuit.n_layers
    per_state = 2 * n_qubits * TRANSCENDENTAL_FLOPS + 2 * dim + 2 * dim * dim
    build = n_layers * (2 * dim ** 3 + dim * dim + 2 * n_qubits * TRANSCENDENTAL_FLOPS)
    return _compute(n_states * per_state + build, n_states * (n_qubits + dim))


def entropy_compute(encoder, n_states: int) -> Cost:
    """Reduced density matrix of half the qubits, then either its eigenvalues (LAPACK, or
    Jacobi sweeps: per round two d x d matmuls and ~30 d elementwise FLOPs) and
    -sum(l log l), or the Renyi-2 entropy -log(sum of squared entries)."""
    kept = 2 ** (encoder.n_qubits // 2)
    traced = 2 ** (encoder.n_qubits - encoder.n_qubits // 2)
    per_state = 2 * kept * kept * traced
    if encoder.entropy_measure == "renyi2":
        per_state += 2 * kept * kept + TRANSCENDENTAL_FLOPS
    elif encoder.eigensolver == "jacobi":
        per_state += (JACOBI_SWEEPS[kept] * (kept - 1) * (4 * kept ** 3 + 30 * kept)
                      + kept * (TRANSCENDENTAL_FLOPS + 2))
    else:
        per_state += EIGVALSH_FLOPS_PER_DIM_CUBED * kept ** 3 + kept * (TRANSCENDENTAL_FLOPS + 2)
    return _compute(n_states * per_state, n_states * (2 ** encoder.n_qubits + 1))


def _encoder_cost(block, n: int) -> Cost:
    encoder, d = block.encoder, block.config.d_model
    dim = 2 ** encoder.n_qubits
    cost = _weights(block.ln_encoder, encoder, block.router) + layernorm_compute(d, n)
    cost += linear_compute(encoder.to_angles, n) + linear_compute(encoder.from_pauli_z, n)
    cost += circuit_compute(encoder.circuit, n)
    cost += _compute(2 * n * dim * encoder.n_qubits, n * (dim + encoder.n_qubits))  # Pauli-Z
    cost += entropy_compute(encoder, n)
    if block.router is not None:  # sigmoid, compare and straight-through mix per token
        cost += _compute(n * (TRANSCENDENTAL_FLOPS + 6), 2 * n)
    return cost


def _attention_cost(block, n: int, context: int) -> Cost:
    attention, d = block.attention, block.config.d_model
    heads, qksam = attention.n_heads, attention.qksam
    cost = _weights(block.ln_attention, attention) + layernorm_compute(d, n)
    cost += linear_compute(attention.qkv, n) + linear_compute(attention.proj, n)
    scores = n * context * heads
    weighted_sum = 2 * n * context * d
    # Keys and values are read (decode) or written (prefill) once per pass.
    classical = _compute(2 * n * context * d + scores * SOFTMAX_FLOPS + weighted_sum,
                         2 * context * d + 2 * n * d)
    if qksam is None:
        return cost + classical
    dim = 2 ** qksam.n_qubits
    quantum = linear_compute(qksam.to_angles, n)
    quantum += circuit_compute(qksam.query_circuit, n * heads)
    quantum += circuit_compute(qksam.key_circuit, n * heads)
    quantum += _compute(scores * (2 * dim + 2 + SOFTMAX_FLOPS) + weighted_sum,
                        context * heads * dim + 2 * scores + n * d)
    if block.router is None:  # every token takes QKSAM; no classical scores are computed
        return cost + quantum
    return cost + classical + quantum + _compute(3 * n * d, 3 * n * d)  # the gated mix


def _ffn_cost(block, n: int) -> Cost:
    ffn, d = block.ffn, block.config.d_model
    cost = _weights(block.ln_ffn, ffn) + layernorm_compute(d, n)
    cost += linear_compute(ffn.up, n) + linear_compute(ffn.down, n)
    hidden = n * ffn.up.out_features
    if isinstance(ffn.activation, nn.GELU):
        return cost + _compute(GELU_FLOPS * hidden, 2 * hidden)
    if isinstance(ffn.activation, BSplineActivation):
        # SiLU base term; locate the segment (~8 ops); Horner over order + 1 coefficients
        # gathered per value (read as extra traffic); the linear extension; the two scales.
        k = ffn.activation.order
        per_value = TRANSCENDENTAL_FLOPS + 3 + 8 + 2 * k + 4 + 3
        return cost + _compute(per_value * hidden, (3 + k) * hidden)
    # Per value and re-upload: cos and sin of the data angle, a z-rotation and a 3x3
    # rotation of the Bloch vector; then the final 3x3 rotation, scale and bias.
    per_value = ffn.activation.reps * (2 * TRANSCENDENTAL_FLOPS + 2 + 6 + 18) + 18 + 2
    return cost + _compute(per_value * hidden, 2 * hidden)


def _embedding_cost(model: QTensorFormer, n: int) -> Cost:
    d, table = model.config.d_model, model.token_embedding
    params = count_params(table) + count_params(model.position_embedding)
    if isinstance(table, TTEmbedding):  # every core is read to rebuild the rows
        return Cost(params, table.flops_lookup(n) + n * d,
                    BYTES_PER_VALUE * (count_params(table) + 3 * n * d))
    # A dense lookup reads only the n token rows and n position rows it gathers.
    return Cost(params, n * d, BYTES_PER_VALUE * 5 * n * d)


def _head_cost(model: QTensorFormer, n: int) -> Cost:
    config, table = model.config, model.token_embedding
    cost = _weights(model.ln_final) + layernorm_compute(config.d_model, n)
    if model.head is not None:
        return cost + _weights(model.head) + linear_compute(model.head, n)
    # Tied head: its parameters are counted under embedding, but read again here.
    traffic = n * (config.d_model + config.vocab_size) + count_params(table)
    if isinstance(table, TTEmbedding):
        return cost + _compute(table.flops_attend(n), traffic)
    return cost + _compute(2 * n * config.d_model * config.vocab_size, traffic)


def model_cost(model: QTensorFormer, n_tokens: int, context: int | None = None) -> dict[str, Cost]:
    """Cost per part of running n_tokens new tokens that attend over `context` tokens in all
    (default: n_tokens, a prefill). A decoded token is model_cost(model, 1, context)."""
    context = n_tokens if context is None else context
    if not 1 <= n_tokens <= context <= model.config.context_length:
        raise ValueError(f"need 1 <= n_tokens <= context <= {model.config.context_length}, "
                         f"got n_tokens={n_tokens}, context={context}")
    costs = {part: Cost() for part in PARTS}
    costs["embedding"] = _embedding_cost(model, n_tokens)
    for block in model.blocks:
        if block.encoder is not None:
            costs["quantum_encoder"] += _encoder_cost(block, n_tokens)
        costs["attention"] += _attention_cost(block, n_tokens, context)
        costs["ffn"] += _ffn_cost(block, n_tokens)
    costs["head"] = _head_cost(model, n_tokens)
    _check_param_total(model, costs)
    return costs


def _check_param_total(model: QTensorFormer, costs: Mapping[str, Cost]) -> None:
    # Every parameter must be attributed to exactly one part, or the per-part table lies.
    counted, actual = total(costs).params, count_params(model)
    if counted != actual:
        raise AssertionError(f"cost model attributes {counted} parameters, model has {actual}")


def flops_per_token(model: QTensorFormer, context: int) -> float:
    return total(model_cost(model, 1, context)).flops


def compression_ratio(model: QTensorFormer) -> float:
    """Parameters of the dense model of the same width/depth over this model's."""
    dense = QTensorFormer(model.config.dense_baseline())
    return count_params(dense) / count_params(model)


def describe(costs: Mapping[str, Cost]) -> list[dict]:
    rows = [{"part": part, "params": c.params, "flops": c.flops, "bytes": c.bytes_moved}
            for part, c in costs.items()]
    t = total(costs)
    rows.append({"part": "total", "params": t.params, "flops": t.flops, "bytes": t.bytes_moved})
    return rows


