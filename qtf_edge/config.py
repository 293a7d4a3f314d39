"""ModelConfig: every size and switch of a Q-TensorFormer, validated at construction.

With every quantum and tensor-train switch off the same config describes a plain dense
GPT-style transformer (the dense baseline), so each ablation is one flag.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields

MAX_QUBITS = 10  # statevectors of 2**10 amplitudes per token are the practical limit here
FORMS = ("simulated", "deploy")
# Every component off: the plain dense GPT. The settings of switched-off components
# (TT ranks, qubits, ...) are not validated, so a dense model of any width is valid.
DENSE_SWITCHES = dict(use_tt=False, tt_embeddings=False, adaptive_rank=False,
                      use_quantum_encoder=False, use_qksam=False, use_router=False,
                      use_qkan=False, form="simulated", low_rank={}, weight_bits={},
                      weight_blocks={})


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 8192
    context_length: int = 128
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.0
    tie_embeddings: bool = True

    # Tensor-train (TT) matrices for the attention and FFN projections.
    use_tt: bool = True
    tt_rank: int = 16
    tt_cores: int = 2
    # How each TT matrix splits its modes: "balanced" (tt_cores cores, each side factorised
    # into modes of similar size) or "low_rank" (two cores, in_modes (in, 1) and out_modes
    # (1, out): W = A B of rank tt_rank, the plain low-rank split compress writes for dense
    # layers; activation-aware truncation is exact for it, see qtf_edge/compress/whitening.py).
    tt_layout: str = "balanced"
    # TT embedding table (and, when tied, the LM head): it dominates a ~1M-parameter LM.
    tt_embeddings: bool = True
    tt_embedding_rank: int = 32

    # Per-token adaptive FFN rank r_t = r_min + round(a * S_t), a = (r_max - r_min) / S_max.
    adaptive_rank: bool = True
    r_min: int = 4
    r_max: int = 16

    # Simulated quantum token encoder (Pauli-Z features + entanglement entropy).
    use_quantum_encoder: bool = True
    n_qubits: int = 4
    n_qlayers: int = 2
    entangler: str = "cnot"
    # Which entanglement entropy sets ranks and routes: "von_neumann" -Tr(rho log rho), or
    # "renyi2" -log Tr(rho^2) (no eigenvalues needed). The deploy form computes the same one.
    entropy: str = "von_neumann"

    # Quantum-kernel attention (QKSAM) and the selective router that chooses it per token.
    use_qksam: bool = True
    use_router: bool = True
    quantum_fraction: float = 0.2
    router_threshold: str = "target"  # "target": steered to quantum_fraction; "learned"
    router_temperature: float = 0.1

    # DARUAN (data re-uploading) activations in the FFN instead of GELU.
    use_qkan: bool = True
    daruan_reps: int = 2

    # "simulated": circuits built from their angles, DARUAN activations, LAPACK eigenvalues
    # (training). "deploy" (made by `qtf-edge distill`): circuits folded into constant
    # unitaries, B-spline activations of spline_grid intervals and order spline_order in
    # place of DARUAN, Jacobi eigenvalues: no complex numbers, no eigh, exportable.
    form: str = "simulated"
    spline_grid: int = 16
    spline_order: int = 3

    # Weight-only quantisation (qtf_edge/quant): {layer path: 4 or 8} for nn.Linear and
    # nn.Embedding layers, which then compute with their block-rounded weights and export
    # as ONNX Runtime's MatMulNBits / GatherBlockQuantized. int4 blocks hold weight_block
    # inputs; int8 has one scale per output channel. Written by `qtf-edge compress`.
    weight_bits: dict = field(default_factory=dict)
    weight_block: int = 32
    # Per-layer int4 blocks where they differ from weight_block ({layer path: block}):
    # compress --bits gives a layer longer blocks when their fewer scales are worth it.
    weight_blocks: dict = field(default_factory=dict)
    # Low-rank factors (model/low_rank.py): {layer path: rank} for nn.Linear and
    # nn.Embedding layers, each then two plain factors (which weight_bits may name, e.g.
    # "blocks.0.ffn.up.project"). Written by `qtf-edge compress --bits`.
    low_rank: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def is_dense(self) -> bool:
        return not (self.use_tt or self.tt_embeddings or self.use_quantum_encoder
                    or self.use_qksam or self.use_qkan)

    def dense_baseline(self) -> "ModelConfig":
        """The dense GPT of the same width, depth, vocabulary and context."""
        return dataclasses.replace(self, **DENSE_SWITCHES)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        return build_from_dict(cls, values, "config")


def build_from_dict(cls, values: dict, what: str):
    """cls(**values) for a config dataclass, refusing unknown keys in one line."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**values)


def _require(ok: bool, field: str, allowed: str, value) -> None:
    if not ok:
        raise ValueError(f"config field '{field}' must be {allowed}, got {value!r}")


def _int_in(config: ModelConfig, field: str, low: int, high: int | None = None) -> None:
    value = getattr(config, field)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    ok = ok and (high is None or value <= high)
    allowed = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
    _require(ok, field, allowed, value)


TT_LAYOUTS = ("balanced", "low_rank")


def tt_modes(config: ModelConfig, rows: int, cols: int):
    """(in_modes, out_modes) of a rows x cols TT matrix under config.tt_layout; (None, None)
    for "balanced", where the layer arranges its own (qtf_edge.tt.linear.arrange_modes)."""
    return ((rows, 1), (1, cols)) if config.tt_layout == "low_rank" else (None, None)


def full_tt_rank(rows: int, cols: int, n_cores: int, layout: str = "balanced") -> int:
    """The largest bond rank a TT matrix of this shape can use under any arrangement of its
    modes that layers choose from (each side ascending or descending; for "low_rank", the
    matrix rank): beyond it nothing is compressed. A layer clips a larger tt_rank to its
    own arrangement's full rank."""
    from qtf_edge.tt.factorize import factorize_dim  # local: config must import fast

    if layout == "low_rank":
        return min(rows, cols)
    row_modes, col_modes = factorize_dim(rows, n_cores), factorize_dim(cols, n_cores)
    best = 1
    for rm in (row_modes, row_modes[::-1]):
        for cm in (col_modes, col_modes[::-1]):
            sizes = [m * n for m, n in zip(rm, cm)]
            best = max(best, max(min(math.prod(sizes[:k]), math.prod(sizes[k:]))
                                 for k in range(1, n_cores)))
    return best


def block_rank_limit(c: ModelConfig) -> int:
    """The largest useful tt_rank: the largest full TT rank of a block projection."""
    shapes = ((c.d_model, 3 * c.d_model), (c.d_model, c.d_model), (c.d_model, c.d_ff),
              (c.d_ff, c.d_model))
    return max(full_tt_rank(rows, cols, c.tt_cores, c.tt_layout) for rows, cols in shapes)


def embedding_rank_limit(c: ModelConfig) -> int:
    return max(full_tt_rank(c.vocab_size, c.d_model, c.tt_cores, c.tt_layout),
               full_tt_rank(c.d_model, c.vocab_size, c.tt_cores, c.tt_layout))


def _validate(c: ModelConfig) -> None:
    for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "d_ff"):
        _int_in(c, name, 1)
    _require(c.d_model % c.n_heads == 0, "d_model",
             f"divisible by n_heads={c.n_heads}", c.d_model)
    _require(isinstance(c.dropout, float | int) and 0.0 <= c.dropout < 1.0,
             "dropout", "a number in [0, 1)", c.dropout)
    for name in ("tie_embeddings", "use_tt", "tt_embeddings", "adaptive_rank",
                 "use_quantum_encoder", "use_qksam", "use_router", "use_qkan"):
        _require(isinstance(getattr(c, name), bool), name, "true or false", getattr(c, name))

    if c.use_tt or c.tt_embeddings:
        _int_in(c, "tt_cores", 2, 4)
        _require(c.tt_layout in TT_LAYOUTS, "tt_layout", " or ".join(map(repr, TT_LAYOUTS)),
                 c.tt_layout)
    if c.use_tt:
        _int_in(c, "tt_rank", 1, block_rank_limit(c))
    if c.tt_embeddings:
        _int_in(c, "tt_embedding_rank", 1, embedding_rank_limit(c))

    if c.adaptive_rank:
        _require(c.use_tt and c.use_quantum_encoder, "adaptive_rank",
                 "false unless use_tt and use_quantum_encoder are on (it needs TT bonds and "
                 "the encoder's entropy)", c.adaptive_rank)
        _int_in(c, "r_min", 1, c.tt_rank)
        _int_in(c, "r_max", c.r_min, c.tt_rank)

    if c.use_quantum_encoder or c.use_qksam:
        _int_in(c, "n_qubits", 2, MAX_QUBITS)
        _int_in(c, "n_qlayers", 1, 16)
        _require(c.entangler in ("cnot", "cz"), "entangler", "'cnot' or 'cz'", c.entangler)
        _require(c.entropy in ("von_neumann", "renyi2"), "entropy", "'von_neumann' or 'renyi2'",
                 c.entropy)
    if c.use_router:
        _require(c.use_qksam and c.use_quantum_encoder, "use_router",
                 "false unless use_qksam and use_quantum_encoder are on (it routes tokens "
                 "by the encoder's entropy to QKSAM)", c.use_router)
        _require(isinstance(c.quantum_fraction, float | int) and 0.0 < c.quantum_fraction < 1.0,
                 "quantum_fraction", "a number in (0, 1)", c.quantum_fraction)
        _require(c.router_threshold in ("target", "learned"), "router_threshold",
                 "'target' or 'learned'", c.router_threshold)
        _require(isinstance(c.router_temperature, float | int) and c.router_temperature > 0,
                 "router_temperature", "a number > 0", c.router_temperature)
    if c.use_qkan:
        _int_in(c, "daruan_reps", 1, 8)
    from qtf_edge.quant.blockwise import BITS, MAX_BLOCK, MIN_BLOCK, is_block_size  # local: config must import fast

    _require(isinstance(c.weight_bits, dict)
             and all(isinstance(k, str) and v in BITS for k, v in c.weight_bits.items()),
             "weight_bits", f"a mapping of layer path to one of {BITS}", c.weight_bits)
    _require(isinstance(c.low_rank, dict)
             and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                     and v >= 1 for k, v in c.low_rank.items()),
             "low_rank", "a mapping of layer path to a rank >= 1", c.low_rank)
    blocks = f"a power of two in [{MIN_BLOCK}, {MAX_BLOCK}]"
    _require(is_block_size(c.weight_block), "weight_block", blocks, c.weight_block)
    _require(isinstance(c.weight_blocks, dict)
             and all(c.weight_bits.get(k) == 4 and is_block_size(v)
                     for k, v in c.weight_blocks.items()),
             "weight_blocks", f"a mapping of int4 layer paths (in weight_bits) to {blocks}",
             c.weight_blocks)
    _require(c.form in FORMS, "form", " or ".join(repr(f) for f in FORMS), c.form)
    if c.form == "deploy" and c.use_qkan:
        from qtf_edge.kan.bspline import GRID_SIZE_RANGE, ORDER_RANGE  # local: config must import fast

        _int_in(c, "spline_grid", *GRID_SIZE_RANGE)
        _int_in(c, "spline_order", *ORDER_RANGE)
