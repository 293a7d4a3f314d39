"""Compression: spectra, rank allocation, budgets met, the run and its report, the CLI."""

import json

import pytest
import torch
from cli_helpers import assert_one_line_error, invoke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from run_factory import FAST_EXPORT, make_run, tiny_model

from qtf_edge.compress import (
    compress_model,
    full_allocation,
    greedy_allocation,
    layer_spectrum,
    params_cost,
    total_cost,
    uniform_allocation,
)
from qtf_edge.compress.run import REPORT_FILE, CompressOptions, compress_run
from qtf_edge.config import ModelConfig
from qtf_edge.export.bundle import verify_bundle
from qtf_edge.export.pipeline import ExportOptions, export_run
from qtf_edge.model import QTensorFormer
from qtf_edge.runs import load_run, read_lineage
from qtf_edge.train.budget import BudgetError, measure, parse_budget
from qtf_edge.tt import TTLinear, tt_to_dense
from qtf_edge.tt.linear import tt_svd

PROFILE = "rpi4"
# Truncation by the weights alone, no calibration: the budget mechanics in isolation.
PLAIN = dict(method="plain", sensitivity=False)


def dense_model(d=32, layers=2, d_ff=64, vocab=512, seed=0) -> QTensorFormer:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab, context_length=16, d_model=d, n_layers=layers,
                         n_heads=2, d_ff=d_ff).dense_baseline()
    return QTensorFormer(config).eval()


def tt_error(weight, in_modes, out_modes, ranks) -> float:
    """||W - TT-SVD(W)||_F at these internal ranks."""
    factors = tt_svd(weight, in_modes, out_modes, (1, *ranks, 1))
    rebuilt = tt_to_dense([torch.from_numpy(f) for f in factors])
    return float(torch.linalg.norm(rebuilt - weight.double()))


# ---------------------------------------------------------------------------- spectra

def test_discarded_energy_is_the_tt_svd_error_for_two_cores_and_bounds_it_for_three():
    weight = torch.randn(24, 36, dtype=torch.float64)
    two = layer_spectrum("w", weight, (4, 6), (6, 6))
    for r in (24, 10, 3, 1):
        assert tt_error(weight, (4, 6), (6, 6), (r,)) ** 2 == pytest.approx(two.discarded((r,)),
                                                                          rel=1e-9, abs=1e-9)
    three = layer_spectrum("w", weight, (2, 3, 4), (3, 3, 4))
    for ranks in ((6, 4), (3, 3), (1, 1)):
        assert tt_error(weight, (2, 3, 4), (3, 3, 4), ranks) ** 2 <= three.discarded(ranks) + 1e-9
    assert two.discarded(two.max_ranks) == pytest.approx(0.0, abs=1e-20)
    assert two.params((5,)) == 5 * 4 * 6 + 5 * 6 * 6


def test_error_grows_as_the_rank_falls():
    weight = torch.randn(32, 48, dtype=torch.float64)
    errors = [tt_error(weight, (4, 8), (6, 8), (r,)) for r in range(32, 0, -1)]
    assert all(a <= b + 1e-12 for a, b in zip(errors, errors[1:]))
    assert errors[0] < 1e-9 < errors[-1]


def test_greedy_meets_the_target_and_its_error_grows_as_the_target_falls():
    torch.manual_seed(0)
    spectra = [layer_spectrum(f"l{i}", torch.randn(32, 64, dtype=torch.float64) * (i + 1),
                              (4, 8), (8, 8)) for i in range(3)]
    full = total_cost(spectra, full_allocation(spectra), params_cost)
    previous = -1.0
    for share in (0.9, 0.6, 0.4, 0.2, 0.05):
        ranks = greedy_allocation(spectra, share * full)
        assert total_cost(spectra, ranks, params_cost) <= share * full
        discarded = sum(s.discarded(ranks[s.name]) for s in spectra)
        assert discarded >= previous
        previous = discarded
    # The largest-norm layer keeps the most rank; uniform keeps one cap for all.
    ranks = greedy_allocation(spectra, 0.4 * full)
    assert ranks["l2"][0] > ranks["l0"][0]
    assert len({r for r in uniform_allocation(spectra, 0.4 * full).values()}) == 1


# ---------------------------------------------------------------------------- compress_model

def test_a_generous_budget_keeps_the_model_exact():
    model = dense_model()
    result = compress_model(model, parse_budget("params=100x"), PROFILE, **PLAIN)
    assert all(row["relative_error"] < 1e-5 for row in result.layers)
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(result.model(ids), model(ids), atol=1e-4, rtol=1e-4)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(d=st.sampled_from([16, 32]), layers=st.integers(1, 2), seed=st.integers(0, 99),
       key=st.sampled_from(["params", "flops", "latency_ms", "energy_uj", "size_mb"]),
       share=st.floats(0.05, 1.5), embeddings=st.booleans(),
       allocator=st.sampled_from(["greedy", "uniform"]),
       method=st.sampled_from(["plain", "whitened"]),
       layout=st.sampled_from(["low_rank", "balanced"]))
def test_the_budget_is_met_or_refused_with_the_smallest_figure(d, layers, seed, key, share,
                                                               embeddings, allocator, method,
                                                               layout):
    model = dense_model(d=d, layers=layers, d_ff=2 * d, vocab=256, seed=seed)
    limit = measure(model, PROFILE, 16)[key] * share
    budget = parse_budget(f"{key}={limit!r}")
    windows = [torch.randint(0, 256, (17,)).tolist() for _ in range(4)]
    try:
        result = compress_model(model, budget, PROFILE, embeddings=embeddings,
                                allocator=allocator, method=method, layout=layout,
                                calibration=windows, sensitivity=False)
    except BudgetError as error:
        assert "cannot be met" in str(error) and "\n" not in str(error)
        # Refused only when even rank 1 everywhere misses: recount that floor independently.
        largest = compress_model(model, parse_budget("params=100x"), PROFILE,
                                 embeddings=embeddings, layout=layout, **PLAIN).model
        assert measure(rank_one(largest), PROFILE, 16)[key] > limit
        return
    assert result.after[key] <= limit
    assert measure(result.model, PROFILE, 16)[key] == pytest.approx(result.after[key])


def rank_one(model):
    """The model with every TT bond cut to rank 1 (in place)."""
    for layer in model.modules():
        if isinstance(layer, TTLinear):
            layer.cores = torch.nn.ParameterList(
                torch.nn.Parameter(c[:1, :, :, :1].detach().clone()) for c in layer.cores)
    return model


def test_an_impossible_budget_names_the_smallest_figure_and_suggests_embeddings():
    model = dense_model()
    with pytest.raises(BudgetError) as error:
        compress_model(model, parse_budget("params=1000"), PROFILE, **PLAIN)
    message = str(error.value)
    assert "params=1000" in message and "parameters (every TT rank at 1)" in message
    assert "--embeddings" in message


def test_a_tt_model_is_re_truncated_and_ranks_never_grow():
    model = tiny_model()
    before = {n: m.ranks for n, m in model.named_modules() if isinstance(m, TTLinear)}
    windows = [torch.randint(0, 512, (33,)).tolist() for _ in range(4)]
    result = compress_model(model, parse_budget("params=0.8x"), PROFILE, embeddings=True,
                            calibration=windows)
    assert result.model.config.tt_layout == "balanced"  # a TT model keeps its layout
    for name, layer in result.model.named_modules():
        if isinstance(layer, TTLinear):
            assert all(a <= b for a, b in zip(layer.ranks, before[name]))
    assert result.after["params"] <= 0.8 * result.before["params"]


def test_sensitivity_weights_are_positive_and_measured_on_the_loss(monkeypatch):
    from qtf_edge.compress import pipeline
    seen = {}

    def spy(model, spectra, truncate, ranks, windows, batch_size=8):
        weights = real(model, spectra, truncate, ranks, windows, batch_size)
        seen.update(weights)
        return weights

    real = pipeline.layer_sensitivity
    monkeypatch.setattr(pipeline, "layer_sensitivity", spy)
    model = tiny_model(dense=True)
    windows = [torch.randint(0, 512, (33,)).tolist() for _ in range(4)]
    result = compress_model(model, parse_budget("params=0.7x"), PROFILE, embeddings=True,
                            calibration=windows)
    assert result.after["params"] <= 0.7 * result.before["params"]
    assert set(seen) == {row["layer"] for row in result.layers}
    assert all(w > 0 for w in seen.values())


# ---------------------------------------------------------------------------- run, report, CLI

def test_report_matches_a_recount_from_the_saved_checkpoint(tmp_path):
    source = make_run(tmp_path / "dense", dense=True)
    report = compress_run(source, tmp_path / "out", CompressOptions(
        budget="params=0.6x", target=PROFILE, embeddings=True, eval_tokens=512))
    saved = load_run(tmp_path / "out")
    assert measure(saved.model, PROFILE, saved.config.context_length) == pytest.approx(
        report["after"])
    for row in report["layers"]:
        layer = saved.model.get_submodule(row["layer"])
        assert list(layer.ranks[1:-1]) == row["ranks_after"]
        assert sum(p.numel() for p in layer.parameters()) == row["params_after"]
    assert json.loads((tmp_path / "out" / REPORT_FILE).read_text())["after"] == report["after"]
    assert read_lineage(tmp_path / "out")["parent"]["path"] == str(source.resolve())
    assert set(report["perplexity"]) == {"before", "truncated"}
    # greedy weighs layers by measured sensitivity unless told not to
    assert all(row["sensitivity"] > 0 for row in report["layers"])
    plain = compress_run(source, tmp_path / "plain", CompressOptions(
        budget="params=0.6x", target=PROFILE, embeddings=True, eval_tokens=512,
        sensitivity=False))
    assert not any("sensitivity" in row for row in plain["layers"])


def test_healing_fine_tunes_the_compressed_model(tmp_path, monkeypatch):
    monkeypatch.setenv("QTF_EDGE_CACHE", str(tmp_path / "cache"))
    source = make_run(tmp_path / "dense", dense=True)
    report = compress_run(source, tmp_path / "out", CompressOptions(
        budget="params=0.6x", target=PROFILE, embeddings=True, heal_steps=10, eval_tokens=512,
        heal_lr=(1e-3,), distill_alpha=1.0))
    # learning the input model's logits only, healing brings the cut model closer to it
    assert [t["kept"] for t in report["healing"]] == [False, True]
    assert set(report["perplexity"]) == {"before", "truncated", "healed"}
    healed = load_run(tmp_path / "out")
    assert measure(healed.model, PROFILE, 32)["params"] == report["after"]["params"]
    assert (tmp_path / "out" / REPORT_FILE).is_file()


def test_cli_prints_the_table_and_json(tmp_path):
    source = make_run(tmp_path / "dense", dense=True)
    result = invoke("compress", source, "--budget", "params=0.6x", "--target", PROFILE,
                    "--embeddings", "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "ranks after" in result.output and "token_embedding.tt" in result.output
    assert "rel. output error" in result.output and "KL to input" in result.output
    result = invoke("compress", source, "--budget", "params=0.6x", "--target", PROFILE,
                    "--embeddings", "--out", tmp_path / "b", "--json")
    assert json.loads(result.stdout)["after"]["params"] <= 0.6 * json.loads(
        result.stdout)["before"]["params"]


def test_sweep_writes_a_run_per_point_and_the_frontier(tmp_path):
    source = make_run(tmp_path / "dense", dense=True)
    result = invoke("compress", source, "--sweep", "params=0.4x:0.8x:3", "--target", PROFILE,
                    "--embeddings", "--out", tmp_path / "sweep", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [p["budget"] for p in doc["points"]] == ["params=0.4x", "params=0.6x", "params=0.8x"]
    for point in doc["points"]:
        assert load_run(point["run"]).config.use_tt
    sizes = [p["params"] for p in doc["points"]]
    assert sizes == sorted(sizes) and doc["frontier"]
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    source = make_run(tmp_path / "dense", dense=True)
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    cases = [
        (("--budget", "watts=3"), ["--budget", "watts"]),
        (("--budget", "params=0.5x", "--target", "toaster"), ["toaster"]),
        (("--budget", "params=1000"), ["cannot be met", "--embeddings"]),
    ]
    for n, (flags, words) in enumerate(cases):
        assert_one_line_error(invoke("compress", source, "--out", tmp_path / f"o{n}", *flags),
                              *words)
        assert not (tmp_path / f"o{n}").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    assert_one_line_error(invoke("compress", source, "--out", taken, "--budget", "params=0.5x"),
                          str(taken), "already exists")
    assert not any(taken.iterdir())
    assert_one_line_error(invoke("compress", not_a_run, "--out", tmp_path / "o9", "--budget",
                                 "params=0.5x"), "config.json")
    assert not (tmp_path / "o9").exists()
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.\n")
    for flags, words in ((("--sweep", "params=1M:200k:3"), ["--sweep", "LOW < HIGH"]),
                         (("--budget", "params=0.5x", "--calib", short),
                          ["--calib", str(short), "16,384", "--calib-tokens"]),
                         (("--budget", "params=0.5x", "--distill-alpha", "1.5"),
                          ["--distill-alpha"]),
                         (("--budget", "params=0.5x", "--layout", "diagonal"), ["--layout"]),
                         (("--budget", "params=0.5x", "--sensitivity", "--allocator",
                           "uniform"), ["--sensitivity"]),
                         (("--sweep", "params=200k"), ["--sweep", "KEY=LOW:HIGH:COUNT"]),
                         (("--budget", "params=0.5x", "--sweep", "params=1:2:2"), ["exactly one"]),
                         ((), ["exactly one"])):
        assert_one_line_error(invoke("compress", source, "--out", tmp_path / "s", *flags), *words)
        assert not (tmp_path / "s").exists()


def test_a_low_rank_compressed_run_exports_and_matches_torch(tmp_path):
    """compress's default layout (W = A B) goes through export like any TT layer: the
    float graphs agree with the checkpoint."""
    source = make_run(tmp_path / "dense", dense=True)
    compress_run(source, tmp_path / "low-rank", CompressOptions(
        budget="params=0.5x", target=PROFILE, embeddings=True, eval_tokens=512,
        calib_tokens=1024))
    assert load_run(tmp_path / "low-rank").config.tt_layout == "low_rank"
    export_run(tmp_path / "low-rank", tmp_path / "bundle",
               ExportOptions(target="cpu", **FAST_EXPORT))
    validation = verify_bundle(tmp_path / "bundle")["validation"]["float"]
    for graph in ("prefill", "decode"):
        assert validation[graph]["top1_agreement"] == 1.0
        assert validation[graph]["max_abs_diff"] < 1e-4
