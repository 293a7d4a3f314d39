import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qtf_edge.config import ModelConfig
from qtf_edge.model import QTensorFormer
from qtf_edge.model.ffn import adaptive_ranks
from qtf_edge.model.router import SelectiveRouter
from qtf_edge.quantum import DARUAN, VariationalCircuit
from qtf_edge.tt import TTEmbedding, TTLinear

SWITCHES = ["use_tt", "tt_embeddings", "adaptive_rank", "use_quantum_encoder", "use_qksam",
            "use_router", "use_qkan"]


def test_forward_gives_finite_logits_of_the_right_shape(tiny_config):
    model = QTensorFormer(tiny_config)
    logits = model(torch.randint(0, tiny_config.vocab_size, (3, 17)))
    assert logits.shape == (3, 17, tiny_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_dense_baseline_is_a_plain_gpt(tiny_config):
    config = tiny_config.dense_baseline()
    model = QTensorFormer(config)
    kinds = {type(m) for m in model.modules()}
    assert not kinds & {TTLinear, TTEmbedding, VariationalCircuit, DARUAN}
    d, ff, L = config.d_model, config.d_ff, config.n_layers
    per_block = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d
    expected = config.vocab_size * d + config.context_length * d + L * per_block + 2 * d
    assert sum(p.numel() for p in model.parameters()) == expected


def test_qtf_is_smaller_than_its_dense_baseline(tiny_config):
    qtf = QTensorFormer(tiny_config)
    dense = QTensorFormer(tiny_config.dense_baseline())
    assert sum(p.numel() for p in qtf.parameters()) < sum(p.numel() for p in dense.parameters()) / 2


@pytest.mark.parametrize("switch_off", [None, *SWITCHES])
def test_every_ablation_builds_and_runs(tiny_config, switch_off):
    changes = {}
    if switch_off is not None:
        changes[switch_off] = False
        # Components that depend on the one switched off go with it.
        if switch_off in ("use_tt", "use_quantum_encoder"):
            changes["adaptive_rank"] = False
        if switch_off in ("use_quantum_encoder", "use_qksam"):
            changes["use_router"] = False
    model = QTensorFormer(dataclasses.replace(tiny_config, **changes))
    logits = model(torch.randint(0, tiny_config.vocab_size, (2, 9)))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ["qtf", "dense"])
def test_kv_cache_decoding_matches_the_full_forward_pass(tiny_config, arch):
    config = tiny_config if arch == "qtf" else tiny_config.dense_baseline()
    model = QTensorFormer(config).eval()
    ids = torch.randint(0, config.vocab_size, (2, 20))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        pieces = [model(ids[:, :7], cache)]  # a prefill, then chunks and single tokens
        pieces.append(model(ids[:, 7:10], cache))
        pieces += [model(ids[:, t:t + 1], cache) for t in range(10, 20)]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)


def test_decoding_past_the_context_is_refused(tiny_config):
    model = QTensorFormer(tiny_config).eval()
    cache = model.new_cache()
    model(torch.zeros(1, tiny_config.context_length, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="exceeds context_length"):
        model(torch.zeros(1, 1, dtype=torch.long), cache)


def test_every_parameter_learns(tiny_config):
    model = QTensorFormer(dataclasses.replace(tiny_config, router_threshold="learned"))
    ids = torch.randint(0, tiny_config.vocab_size, (4, tiny_config.context_length))
    logits = model(ids[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
    silent = [name for name, p in model.named_parameters()
              if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


def test_router_gate_is_hard_forward_and_differentiable_backward():
    config = ModelConfig(router_threshold="learned")
    router = SelectiveRouter(config)
    hardness = torch.rand(4, 50, requires_grad=True)
    gate = router(hardness)
    assert set(gate.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(gate, (hardness > router.threshold).float())
    (gate * torch.arange(50.0)).sum().backward()
    assert hardness.grad.abs().sum() > 0
    assert router.threshold.grad.abs() > 0
    assert router.routed_fraction == gate.mean()


def test_steered_router_reaches_its_target_fraction():
    router = SelectiveRouter(ModelConfig(quantum_fraction=0.2)).train()
    for _ in range(100):
        router(torch.rand(8, 64) ** 2)  # skewed hardness: the threshold must move
    router.eval()
    fraction = router(torch.rand(64, 256) ** 2).mean().item()
    assert abs(fraction - 0.2) < 0.03


def test_routing_with_all_gates_closed_is_classical_attention(tiny_config):
    model = QTensorFormer(tiny_config).eval()
    attention = model.blocks[0].attention
    x = torch.randn(2, 10, tiny_config.d_model)
    routed_none = attention(x, gate=torch.zeros(2, 10))
    routed_all = attention(x, gate=torch.ones(2, 10))
    qksam_only = attention(x, gate=None)
    qksam, attention.qksam = attention.qksam, None
    classical_only = attention(x)
    attention.qksam = qksam
    torch.testing.assert_close(routed_none, classical_only)
    torch.testing.assert_close(routed_all, qksam_only)
    assert not torch.allclose(routed_none, routed_all, atol=1e-4)


def test_adaptive_ranks_span_r_min_to_r_max():
    entropy = torch.tensor([0.0, 0.5, 1.0, 2.0]) * torch.log(torch.tensor(4.0)) / 2
    ranks = adaptive_ranks(entropy, max_entropy=float(torch.log(torch.tensor(4.0))),
                           r_min=2, r_max=10)
    assert ranks.tolist() == [2, 4, 6, 10]


def test_token_traces_report_entropy_route_and_rank(tiny_config):
    model = QTensorFormer(tiny_config).eval()
    model(torch.randint(0, tiny_config.vocab_size, (2, 16)))
    traces = model.token_traces()
    assert len(traces) == tiny_config.n_layers
    s_max = model.blocks[0].encoder.max_entropy
    for trace in traces:
        assert trace.entropy.shape == (2, 16)
        assert (trace.entropy >= -1e-6).all() and (trace.entropy <= s_max + 1e-5).all()
        assert set(trace.routed.unique().tolist()) <= {0.0, 1.0}
        assert (trace.rank >= tiny_config.r_min).all() and (trace.rank <= tiny_config.r_max).all()
    assert 0.0 <= model.routed_fraction() <= 1.0


def test_per_token_rank_changes_the_ffn_output(tiny_config):
    ffn = QTensorFormer(tiny_config).blocks[0].ffn
    x = torch.randn(1, 5, tiny_config.d_model)
    low = ffn(x, torch.full((1, 5), 2))
    high = ffn(x, torch.full((1, 5), tiny_config.tt_rank))
    torch.testing.assert_close(high, ffn(x))  # full rank == no mask
    assert not torch.allclose(low, high, atol=1e-5)


@pytest.mark.parametrize("arch", ["qtf", "dense"])
def test_a_few_steps_of_training_lower_the_loss(tiny_config, arch):
    config = tiny_config if arch == "qtf" else tiny_config.dense_baseline()
    model = QTensorFormer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 32, (4, 1)).repeat(1, config.context_length)  # trivially predictable

    def loss_now():
        logits = model(ids[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())

    first = loss_now().item()
    for _ in range(30):
        optimizer.zero_grad()
        loss = loss_now()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    assert loss_now().item() < 0.5 * first


def test_qksam_inference_path_matches_the_autograd_path(tiny_config):
    from qtf_edge.model.attention import causal_mask
    from qtf_edge.model.qksam import QuantumKernelAttention
    torch.manual_seed(0)
    qksam = QuantumKernelAttention(tiny_config)
    nn.init.normal_(qksam.to_angles.weight, std=1.0)
    x = torch.randn(2, 7, tiny_config.d_model)
    query, key = qksam.states(x)  # batched circuits == each circuit on its own angles
    angles = qksam.to_angles(x).view(2, 7, 2, tiny_config.n_heads, tiny_config.n_qubits).transpose(1, 3)
    assert torch.allclose(query, qksam.query_circuit(angles[:, :, 0]), atol=1e-6)
    assert torch.allclose(key, qksam.key_circuit(angles[:, :, 1]), atol=1e-6)
    for mask in (causal_mask(7, 7, x.device), None, causal_mask(3, 7, x.device)):
        q = query if mask is None or mask.shape[0] == 7 else query[:, :, -3:]
        reference = qksam.attention(q, key, mask)
        with torch.inference_mode():
            fast = qksam.attention(q, key, mask)
        assert torch.allclose(fast, reference.detach(), atol=1e-6)
        if mask is not None:
            assert torch.all(fast[..., ~mask] == 0)


def test_training_step_under_bf16_autocast_keeps_the_simulation_in_float32(tiny_config):
    # Mixed precision (as training uses on CUDA) must not reach the simulated circuits:
    # bf16 amplitudes break state norms, and there is no bf16 eigh on CUDA.
    model = QTensorFormer(tiny_config)
    ids = torch.randint(0, tiny_config.vocab_size, (2, 17))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(trace.entropy.dtype == torch.float32 for trace in model.token_traces())
    assert model.blocks[0].encoder.circuit.theta.grad.abs().sum() > 0
