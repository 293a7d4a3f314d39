"""qtf-edge export: the lowering pass, the pipeline from run folder to bundle, the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml
from run_factory import (
    FAST_EXPORT,
    VOCAB,
    export_dense_run,
    make_run,
    tiny_config,
    tiny_model,
    tokenizer_json,
)

from cli_helpers import assert_one_line_error, invoke
from qtf_edge import runs
from qtf_edge.data import load_tokenizer
from qtf_edge.export import lowering, pipeline
from qtf_edge.export.bundle import runner_module, verify_bundle
from qtf_edge.export.lowering import apply_lowering, choose_lowering
from qtf_edge.export.pipeline import ExportOptions, export_run
from qtf_edge.export.recipes import load_recipe
from qtf_edge.generate import generate
from qtf_edge.model import QTensorFormer
from qtf_edge.tt import TTLinear



def tt_only_model(seed=0) -> QTensorFormer:
    torch.manual_seed(seed)
    config = dataclasses.replace(tiny_config(dense=True), use_tt=True, tt_rank=8,
                                 tt_embeddings=True, tt_embedding_rank=8)
    return QTensorFormer(config).eval()


def logits(model, ids):
    with torch.inference_mode():
        return model(ids)


# ---------------------------------------------------------------------------- lowering

def dense_looks_faster(monkeypatch):
    monkeypatch.setattr(lowering, "_estimated_ms",
                        lambda product, tokens, estimator: {"tt": 2.0, "dense": 1.0})


def test_the_roofline_keeps_small_tt_layers_at_one_token():
    # memory-bound at one token: fewer bytes (the cores) is faster
    rows = choose_lowering(tt_only_model(), "rpi4")
    assert rows and all(r["chosen"] == "tt" and r["tt_ms"] < r["dense_ms"] for r in rows)
    # at many tokens the head's product is compute-bound, where W's one GEMM needs fewer
    # FLOPs than this chain
    head = next(r for r in choose_lowering(tt_only_model(), "rpi4", tokens=4096)
                if "head" in r["layer"])
    assert (head["chosen"] == "dense") == (head["dense_ms"] < 0.95 * head["tt_ms"])


def test_materialised_layers_compute_the_same_function(monkeypatch):
    dense_looks_faster(monkeypatch)
    model = tt_only_model()
    ids = torch.randint(0, VOCAB, (2, 16))
    before = logits(model, ids)
    rows = choose_lowering(model, "rpi4")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, TTLinear)}
    assert {r["layer"] for r in rows} == (set(layers) - {"token_embedding.tt"}
                                          | {"token_embedding (tied head)"})
    assert all(r["chosen"] == "dense" for r in rows)
    assert all(layer.lowering == "dense" for layer in layers.values())
    assert torch.allclose(logits(model, ids), before, atol=1e-5)
    apply_lowering(model, [{**r, "chosen": "tt"} for r in rows])
    assert all(layer.lowering == "tt" for layer in layers.values())
    assert torch.allclose(logits(model, ids), before, atol=1e-5)


def test_a_target_without_batched_matmul_gets_materialised_layers():
    model = tt_only_model()  # the roofline keeps every chain at one token (test above)
    rows = choose_lowering(model, "edge_tpu", chain_runs=False)
    assert rows and all(r["chosen"] == "dense" and "no batched matmul" in r["why"]
                        for r in rows)
    weight_bytes = 4 * sum(p.numel() for p in model.parameters())
    capped = choose_lowering(tt_only_model(), "edge_tpu", chain_runs=False,
                             max_bytes=weight_bytes)
    assert all(r["chosen"] == "tt" and "size budget" in r["why"] for r in capped)


def test_lowering_respects_the_size_cap_and_masks(monkeypatch):
    dense_looks_faster(monkeypatch)
    model = tt_only_model()
    weight_bytes = 4 * sum(p.numel() for p in model.parameters())
    rows = choose_lowering(model, "rpi4", max_bytes=weight_bytes)  # no room to grow
    assert all(r["chosen"] == "tt" and "size budget" in r["why"] for r in rows)
    qtf = tiny_model()  # adaptive rank: its FFN layers get per-token bond masks
    qtf_rows = choose_lowering(qtf, "rpi4")
    masked = [r for r in qtf_rows if ".ffn." in r["layer"]]
    assert masked and all(r["chosen"] == "tt" and "bond masks" in r["why"] for r in masked)
    assert qtf.config.tt_embeddings  # its table is lowered as the tied head only
    assert [r["layer"] for r in qtf_rows if "token_embedding" in r["layer"]] == [
        "token_embedding (tied head)"]


# ---------------------------------------------------------------------------- pipeline

@pytest.fixture(scope="module")
def dense_bundle(tmp_path_factory):
    return export_dense_run(tmp_path_factory.mktemp("export"), "rpi")


def test_bundle_verifies_and_its_graphs_match_torch(dense_bundle):
    source, bundle, report = dense_bundle
    manifest = verify_bundle(bundle)
    assert manifest["target"] == "rpi" and manifest["runtime"] == "onnxruntime"
    assert manifest["source"]["model_sha256"] == runs.sha256_file(source / "model.safetensors")
    assert set(manifest["graphs"]) == {"prefill", "decode", "prefill_int8", "decode_int8",
                                       "model", "model_int8"}
    validation = manifest["validation"]
    for kind, graph in (("float", "prefill"), ("float", "decode"), ("tflite", "model")):
        assert validation[kind][graph]["top1_agreement"] == 1.0
        assert validation[kind][graph]["max_abs_diff"] < 1e-4
    for kind, graph in (("int8", "prefill"), ("int8", "decode"), ("tflite_int8", "model")):
        entry = validation[kind][graph]
        assert entry["perplexity"] <= 1.03 * entry["float_perplexity"]
    assert [p["pass"] for p in report["passes"]] == ["deploy_form", "lower_tt", "onnx",
                                                     "onnx_int8", "tflite", "tflite_int8",
                                                     "validate"]
    sizes = {f["path"]: f["bytes"] for f in manifest["files"]}
    assert sizes["model_int8.tflite"] < sizes["model.tflite"]
    assert all(p["max_logit_change"] <= 1e-5 for p in report["passes"] if "before" in p)


@pytest.mark.parametrize("runtime", ["onnxruntime", "ai-edge-litert"])
def test_the_bundle_runner_generates_what_qtf_edge_generate_does(dense_bundle, runtime):
    source, bundle, _ = dense_bundle
    run = runs.load_run(source)
    tokenizer = load_tokenizer(run.tokenizer_path)
    expected = generate(run.model, tokenizer, "The castle was", max_new_tokens=12,
                        temperature=0).token_ids
    prompt = tokenizer.encode("The castle was").ids
    got = runner_module().generate(str(bundle), prompt, 12, temperature=0.0, stop_token_ids=(),
                                   runtime=runtime)
    assert got == expected


def test_a_failed_validation_writes_no_bundle(tmp_path, monkeypatch):
    real = pipeline.validate_graphs

    def flipped(*args, **kwargs):  # as if the graphs disagreed with torch
        result = real(*args, **kwargs)
        result["prefill"]["top1_agreement"] = 0.5
        return result

    monkeypatch.setattr(pipeline, "validate_graphs", flipped)
    source = make_run(tmp_path / "dense", dense=True)
    with pytest.raises(ValueError, match="top-1 agreement with torch 0.5000"):
        export_run(source, tmp_path / "bundle", ExportOptions(target="cpu", **FAST_EXPORT))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]


# ---------------------------------------------------------------------------- CLI

def test_a_missing_tflite_extra_names_the_extra(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_litert(name, *args, **kwargs):
        if name.startswith("litert_torch"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_litert)
    dense = make_run(tmp_path / "dense", dense=True)
    assert_one_line_error(invoke("export", dense, "--out", tmp_path / "b", "--target", "rpi",
                                 "--data-tokens", "256"), "pip install 'qtf-edge[tflite]'")
    assert not (tmp_path / "b").exists()


def test_list_targets_shows_every_recipe():
    result = invoke("export", "--list-targets", "--json")
    assert result.exit_code == 0, result.output
    assert {t["target"] for t in json.loads(result.output)} >= {"cpu", "rpi", "edgetpu"}


def static_int8_recipe(folder) -> str:
    data = yaml.safe_load(load_recipe("cpu").path.read_text())
    data["quantization"]["onnx_int8"] = {"mode": "static", "representative_dataset": "train"}
    (folder / "static.yaml").write_text(yaml.safe_dump(data))
    return str(folder / "static.yaml")


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    dense = make_run(tmp_path / "dense", dense=True)
    simulated = runs.save_run(tmp_path / "qtf", tiny_model(), tokenizer_json().encode(),
                              command="tests")
    out = tmp_path / "b"
    for args, words in (
            ((simulated, "--out", out), ["simulated form", "--distill"]),
            ((dense, "--out", out, "--target", "nowhere"), ["nowhere", "cpu, edgetpu, rpi"]),
            ((dense, "--out", out, "--target", static_int8_recipe(tmp_path)),
             ["onnx_int8 mode static", "not implemented"]),
            ((tmp_path, "--out", out), ["config.json"]),
            ((dense,), ["--out"])):
        assert_one_line_error(invoke("export", *args), *words)
        assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(invoke("export", dense, "--out", out), "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
