"""ONNX export: prefill/decode graphs with tensor KV caches, int8, validation against torch.

Each model kind (dense, TT-only, deploy-form QTF) is exported once per module; the graphs
were traced at batch 2, prefill length 5, decode length 3 after 5 (onnx_graphs.EXAMPLE_*),
and the tests run them at other sizes.
"""

import contextlib
import dataclasses
import io
import math

import numpy as np
import onnx
import pytest
import torch
from run_factory import VOCAB, tokenizer_json
from tokenizers import Tokenizer

from qtf_edge.config import ModelConfig
from qtf_edge.derived import calibration_windows
from qtf_edge.distill import daruan_input_ranges, deploy_model, fit_activations
from qtf_edge.export.graphs import DecodeGraph, PrefillGraph, cache_names
from qtf_edge.export.onnx_graphs import export_onnx
from qtf_edge.export.onnx_int8 import quantize_dynamic_int8
from qtf_edge.export.validate import (
    ValidationError,
    check_thresholds,
    prefill_then_decode,
    session,
    validate_graphs,
)
from qtf_edge.model import QTensorFormer

TOLERANCE = 1e-4  # |ONNX - torch| on logits and cache entries (measured: ~3e-7)
KINDS = ("dense", "tt", "qtf")
# One layer and two qubits keep the QTF export (Jacobi sweeps, TT chains) to seconds; three
# circuit layers entangle the two qubits enough that tokens get different ranks and routes.
QTF = ModelConfig(vocab_size=VOCAB, context_length=32, d_model=32, n_layers=1, n_heads=2,
                  d_ff=64, tt_rank=8, tt_embedding_rank=8, r_min=2, r_max=8, n_qubits=2,
                  n_qlayers=3)
CONFIGS = {
    "dense": dataclasses.replace(QTF.dense_baseline(), n_layers=2),  # names of two layers
    "tt": dataclasses.replace(QTF.dense_baseline(), use_tt=True, tt_embeddings=True),
}


@pytest.fixture(scope="module")
def windows():
    tokenizer = Tokenizer.from_str(tokenizer_json())
    return calibration_windows(tokenizer, None, 16 * QTF.context_length + 1, QTF.context_length)


def deploy_qtf(windows) -> QTensorFormer:
    """A random QTF in the deploy form, made as `qtf-edge distill` makes it."""
    simulated = QTensorFormer(QTF)
    simulated.train()
    simulated(torch.tensor(windows[:4])[:, :-1])  # steer the router off its initial threshold
    simulated.eval()
    fitted = fit_activations(simulated, daruan_input_ranges(simulated, windows[:8]), 8, 3)
    return deploy_model(simulated, fitted, 8, 3)


@pytest.fixture(scope="module", params=KINDS)
def exported(request, windows, tmp_path_factory):
    """(kind, model, folder, export info, what the export printed)."""
    torch.manual_seed(0)
    kind = request.param
    model = deploy_qtf(windows) if kind == "qtf" else QTensorFormer(CONFIGS[kind]).eval()
    folder = tmp_path_factory.mktemp(kind)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        info = export_onnx(model, folder)
    return kind, model, folder, info, printed.getvalue()


def run(path, feeds) -> dict[str, np.ndarray]:
    graph = session(path)
    names = [o.name for o in graph.get_outputs()]
    return dict(zip(names, graph.run(names, feeds)))


def torch_cache(model, ids: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
    with torch.inference_mode():
        logits, *presents = PrefillGraph(model)(ids)
    return logits.numpy(), [p.numpy() for p in presents]


# ---------------------------------------------------------------------------- the wrappers

def test_cache_names_list_key_states_only_where_attention_has_qksam():
    qtf = dataclasses.replace(QTF, n_layers=2)
    assert cache_names(qtf) == ["0.key", "0.value", "0.key_state",
                                "1.key", "1.value", "1.key_state"]
    assert cache_names(qtf.dense_baseline()) == ["0.key", "0.value", "1.key", "1.value"]


def test_wrappers_decode_after_prefill_as_the_full_forward_pass(windows):
    model = deploy_qtf(windows)
    ids = torch.tensor(windows[:2])[:, :-1]
    with torch.inference_mode():
        expected = model(ids)
        trace = model.token_traces()[0]
        logits, *past = PrefillGraph(model)(ids[:, :10])
        steps = [logits]
        for start, stop in ((10, 11), (11, 15), (15, ids.shape[1])):  # 1, 4, the rest
            logits, *past = DecodeGraph(model)(ids[:, start:stop], *past)
            steps.append(logits)
    # Both attention paths and several FFN ranks are in use, so the graphs compute them all.
    assert 0 < trace.routed.mean() < 1 and trace.rank.unique().numel() > 1
    assert [p.shape[2] for p in past] == [ids.shape[1]] * len(cache_names(model.config))
    assert past[2].shape[-1] == 2**QTF.n_qubits  # key_state: one amplitude per basis state
    torch.testing.assert_close(torch.cat(steps, 1), expected, atol=TOLERANCE, rtol=0)


# ---------------------------------------------------------------------------- the graphs

def test_graphs_follow_the_io_contract_with_dynamic_axes(exported):
    _, model, folder, info, printed = exported
    config = model.config
    names = cache_names(config)
    prefill, decode = info["prefill"], info["decode"]
    assert list(prefill["inputs"]) == ["input_ids"]
    assert list(decode["inputs"]) == ["input_ids", *(f"past_key_values.{n}" for n in names)]
    for graph in (prefill, decode):
        assert list(graph["outputs"]) == ["logits", *(f"present.{n}" for n in names)]
        assert graph["inputs"]["input_ids"] == ["batch", "sequence"]
        assert graph["outputs"]["logits"] == ["batch", "sequence", config.vocab_size]
        assert graph["opset"] == 18 and graph["nodes"] == sum(graph["op_types"].values())
    for name in names:
        last = 2**config.n_qubits if name.endswith("key_state") else config.head_dim
        assert decode["inputs"][f"past_key_values.{name}"] == [
            "batch", config.n_heads, "past_sequence", last]
        assert decode["outputs"][f"present.{name}"] == [
            "batch", config.n_heads, "past_sequence + sequence", last]
        assert prefill["outputs"][f"present.{name}"] == [
            "batch", config.n_heads, "sequence", last]
    # Weights inside the two files, nothing beside them; each passes the full checker.
    assert sorted(p.name for p in folder.iterdir()) == ["decode.onnx", "prefill.onnx"]
    for graph in (prefill, decode):
        path = folder / graph["file"]
        assert graph["bytes"] == path.stat().st_size
        proto = onnx.load(path, load_external_data=False)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL
                       for t in proto.graph.initializer)
        onnx.checker.check_model(proto, full_check=True)
    assert printed == ""  # the exporter's chatter is held back


def test_prefill_equals_torch_at_another_batch_and_length(exported, windows):
    _, model, folder, _, _ = exported
    ids = torch.tensor(windows[:3])[:, :11]  # traced at (2, 5)
    expected_logits, expected_cache = torch_cache(model, ids)
    got = run(folder / "prefill.onnx", {"input_ids": ids.numpy()})
    assert got["logits"].shape == (3, 11, model.config.vocab_size)
    assert np.abs(got["logits"] - expected_logits).max() <= TOLERANCE
    presents = [got[f"present.{name}"] for name in cache_names(model.config)]
    for present, expected in zip(presents, expected_cache, strict=True):
        assert present.shape == expected.shape
        assert np.abs(present - expected).max() <= TOLERANCE


def test_validation_matches_torch_on_calibration_windows(exported, windows):
    _, model, folder, _, _ = exported
    result = validate_graphs(model, folder / "prefill.onnx", folder / "decode.onnx", windows,
                             decode_windows=3, decode_steps=20)
    assert result["prefill"]["positions"] == len(windows) * model.config.context_length
    assert result["decode"]["positions"] == 3 * 20
    for entry in result.values():
        assert entry["max_abs_diff"] <= TOLERANCE
        assert entry["top1_agreement"] == 1.0
        assert entry["perplexity"] == pytest.approx(entry["torch_perplexity"], rel=1e-5)
    check_thresholds(result, "float")


def test_decode_after_prefill_equals_the_full_forward_pass(exported, windows):
    _, model, folder, _, _ = exported
    ids = np.asarray(windows[:3], dtype=np.int64)[:, :-1]  # batch 3, the full context
    with torch.inference_mode():
        expected = model(torch.from_numpy(ids)).numpy()
    prefill, decode = session(folder / "prefill.onnx"), session(folder / "decode.onnx")
    one_by_one = prefill_then_decode(prefill, decode, ids, prefix=7)
    assert np.abs(one_by_one - expected[:, 7:]).max() <= TOLERANCE
    assert (one_by_one.argmax(-1) == expected[:, 7:].argmax(-1)).all()
    # As the on-device runner calls them: batch 1, and here a one-token prefill too.
    single = prefill_then_decode(prefill, decode, ids[:1], prefix=1)
    assert np.abs(single - expected[:1, 1:]).max() <= TOLERANCE
    # Several new tokens per call (decode's sequence axis), feeding presents back as pasts.
    past = {k.replace("present.", "past_key_values."): v
            for k, v in run(folder / "prefill.onnx", {"input_ids": ids[:, :7]}).items()
            if k.startswith("present.")}
    got = run(folder / "decode.onnx", {"input_ids": ids[:, 7:20], **past})
    assert np.abs(got["logits"] - expected[:, 7:20]).max() <= TOLERANCE


def test_int8_graphs_run_with_finite_perplexity(exported, windows, tmp_path):
    kind, model, folder, _, _ = exported
    sizes = {name: quantize_dynamic_int8(folder / f"{name}.onnx", tmp_path / f"{name}_int8.onnx")
             for name in ("prefill", "decode")}
    float_result = validate_graphs(model, folder / "prefill.onnx", folder / "decode.onnx",
                                   windows, decode_windows=2, decode_steps=8)
    result = validate_graphs(model, tmp_path / "prefill_int8.onnx", tmp_path / "decode_int8.onnx",
                             windows, decode_windows=2, decode_steps=8, reference=float_result)
    for name, entry in result.items():
        assert math.isfinite(entry["perplexity"])
        assert entry["float_perplexity"] == float_result[name]["perplexity"]
        onnx.checker.check_model(onnx.load(tmp_path / f"{name}_int8.onnx"), full_check=True)
    check_thresholds(result, "int8")  # random weights: int8 noise moves perplexity ~1e-5
    if kind == "dense":  # every block projection is a constant 2-D MatMul: all become int8
        for info in sizes.values():
            assert info["op_types"]["MatMulInteger"] >= 4 * model.config.n_layers
            assert info["bytes"] < info["source_bytes"]


# ---------------------------------------------------------------------------- refusals

def test_a_simulated_qtf_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="simulated form.*qtf-edge distill"):
        export_onnx(QTensorFormer(QTF), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def graph_result(**changes) -> dict:
    entry = {"graph": "prefill.onnx", "windows": 4, "positions": 128, "max_abs_diff": 0.5,
             "mean_abs_diff": 0.01, "top1_agreement": 1.0, "perplexity": 100.0,
             "torch_perplexity": 100.0, "float_perplexity": 100.0}
    return {"prefill": {**entry, **changes}, "decode": {**entry, "graph": "decode.onnx"}}


def test_thresholds_pass_good_graphs_and_name_the_numbers_of_bad_ones():
    check_thresholds(graph_result(top1_agreement=0.999), "float")
    check_thresholds(graph_result(perplexity=103.0), "int8")
    with pytest.raises(ValidationError, match=r"prefill.onnx \(128 positions\): top-1 "
                                              r"agreement with torch 0\.9900 < 0\.999"):
        check_thresholds(graph_result(top1_agreement=0.99), "float")
    with pytest.raises(ValidationError, match=r"perplexity 104\.0000 > 1\.03 x the float "
                                              r"graph's 100\.0000 \(= 103\.0000\)"):
        check_thresholds(graph_result(perplexity=104.0), "int8")
    with pytest.raises(ValidationError, match="perplexity nan"):
        check_thresholds(graph_result(perplexity=float("nan")), "int8")
    with pytest.raises(ValueError, match="kind must be one of float, int8"):
        check_thresholds(graph_result(), "fp16")


def test_sessions_refuse_a_missing_graph_and_bad_threads(tmp_path):
    with pytest.raises(ValueError, match="no ONNX graph at"):
        session(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="threads must be an integer >= 0"):
        session(tmp_path / "missing.onnx", threads=-1)
