"""The edgetpu target: full-integer TFLite, the operator table, the Edge TPU check, the
ONNX op check of onnxruntime targets."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml
from run_factory import FAST_EXPORT, export_dense_run, make_run, tiny_model

from qtf_edge import runs
from qtf_edge.export.bundle import runner_module, verify_bundle
from qtf_edge.export.edgetpu import edgetpu_report, op_problems
from qtf_edge.export.pipeline import ExportOptions, export_run
from qtf_edge.export.recipes import load_recipe
from qtf_edge.export.tflite_ops import GRAPH_OUTPUT, TFLiteOp, TFLiteTensor, layer_of, read_ops

EDGETPU = load_recipe("edgetpu")


def tensor(dtype="int8", shape=(1, 8, 16), constant=False, dynamic=False, name="t"):
    return TFLiteTensor(name=name, dtype=dtype, shape=shape, dynamic=dynamic, constant=constant)


def op(name="FULLY_CONNECTED", inputs=(), outputs=(), flops=10, index=0, layer="blocks.0"):
    return TFLiteOp(index=index, name=name, layer=layer, inputs=tuple(inputs),
                    outputs=tuple(outputs) or (tensor(),), flops=flops)


# ---------------------------------------------------------------------------- the check

def test_op_problems_follow_the_documented_requirements():
    weights, bias = tensor(shape=(16, 16), constant=True), tensor("int32", (16,), constant=True)
    assert op_problems(op(inputs=(tensor(), weights, bias)), EDGETPU) == []
    assert op_problems(op("BATCH_MATMUL", (tensor(), tensor())), EDGETPU) == [
        "BATCH_MATMUL is not a supported operation"]
    assert op_problems(op(inputs=(tensor("float32"), weights)), EDGETPU) == ["float32 tensor"]
    # int32 is a bias only when constant; token ids fed at run time are not 8-bit
    assert op_problems(op("RESHAPE", (tensor("int32"),)), EDGETPU) == ["int32 tensor"]
    four_d = tensor(shape=(2, 4, 8, 16))
    assert op_problems(op("ADD", (four_d,)), EDGETPU) == [
        "4 dimensions above 1 (at most 3)"]
    assert op_problems(op("ADD", (tensor(shape=(1, 1, 8, 16)),)), EDGETPU) == []


def test_the_tpu_runs_the_prefix_before_the_first_unsupported_op():
    ops = [op("ADD", flops=10, index=0), op("MUL", flops=30, index=1),
           op("BATCH_MATMUL", flops=40, index=2, layer="blocks.0.attention"),
           op("ADD", flops=20, index=3)]
    report = edgetpu_report(ops, EDGETPU, Path("m.tflite"))
    assert report["tpu_ops"] == 2 and math.isclose(report["tpu_flops_share"], 0.4)
    # the last ADD is supported but runs on the CPU: the compiler maps one prefix only
    assert report["supported_ops"] == 3 and math.isclose(report["supported_flops_share"], 0.6)
    assert report["first_cpu_op"] == {"index": 2, "op": "BATCH_MATMUL",
                                      "layer": "blocks.0.attention", "flops": 40,
                                      "problems": ["BATCH_MATMUL is not a supported operation"]}
    assert [(r["op"], r["count"], r["flops_share"]) for r in report["cpu_ops"]] == [
        ("BATCH_MATMUL", 1, 0.4)]
    everything = edgetpu_report(ops[:2], EDGETPU, Path("m.tflite"))
    assert everything["first_cpu_op"] is None and everything["tpu_flops_share"] == 1.0


def test_a_dynamic_shape_is_refused_naming_tensor_and_layer():
    ops = [op("ADD", (tensor(dynamic=True, name="ids"),), layer="blocks.1.ffn")]
    with pytest.raises(ValueError, match="static shapes.*ADD.*blocks.1.ffn.*'ids'"):
        edgetpu_report(ops, EDGETPU, Path("m.tflite"))
    relaxed = dataclasses.replace(EDGETPU, constraints=dataclasses.replace(
        EDGETPU.constraints, static_shapes=False))
    assert edgetpu_report(ops, relaxed, Path("m.tflite"))["tpu_ops"] == 1


def test_layer_names_come_from_litert_scopes():
    model = tiny_model(dense=True)
    block = ("qtf_edge.export.tflite._Logits/qtf_edge.model.qtensorformer.QTensorFormer_model/"
             "qtf_edge.model.block.Block_1/")
    attention = "qtf_edge.model.attention.CausalSelfAttention_attention/"
    # a ModuleList (blocks) is not a scope of its own: it is found again through the model
    assert layer_of(block + attention + "torch.nn.modules.linear.Linear_qkv;12", model) \
        == "blocks.1.attention.qkv"
    fused = (block + "torch.nn.modules.normalization.LayerNorm_ln_attention;;"
             + block + attention + "torch.nn.modules.linear.Linear_proj;3")
    assert layer_of(fused, model) == "blocks.1.attention.proj"  # the deepest scope wins
    assert layer_of(block + attention + "torch.nn.modules.linear.Linear_qkv") \
        == "1.attention.qkv"  # without the model: the scope's attributes as they are
    assert layer_of("serving_default_output_0_output", model) == ""


# ---------------------------------------------------------------------------- pipeline

@pytest.fixture(scope="module")
def edgetpu_bundle(tmp_path_factory):
    return export_dense_run(tmp_path_factory.mktemp("edgetpu"), "edgetpu")


def test_edgetpu_bundle_is_full_integer_validated_and_checked(edgetpu_bundle):
    source, bundle, report = edgetpu_bundle
    manifest = verify_bundle(bundle)
    assert manifest["target"] == "edgetpu" and manifest["runtime"] == "ai-edge-litert"
    command = "edgetpu_compiler -s -o edgetpu model_int8.tflite"
    assert manifest["compiler_command"] == command
    assert command in (bundle / "README.txt").read_text()
    entry = manifest["validation"]["tflite_int8"]["model"]
    assert entry["perplexity"] <= 1.03 * entry["float_perplexity"]
    model = runs.load_run(source).model
    ops = read_ops(bundle / "model_int8.tflite", model)
    module_names = {name for name, _ in model.named_modules()}
    for o in ops:  # every layer named is a real module (or the graph output)
        assert o.layer in module_names | {GRAPH_OUTPUT}, o.as_dict()
    products = [o for o in ops if o.name == "FULLY_CONNECTED" and o.layer != GRAPH_OUTPUT]
    assert products and all(o.inputs[0].dtype == "int8" and o.outputs[0].dtype == "int8"
                            for o in products)
    for o in products:  # 2 * tokens * in * out
        assert o.flops == 2 * math.prod(o.outputs[0].shape) * o.inputs[1].shape[1]
    head = next(o for o in ops if o.layer == GRAPH_OUTPUT)
    assert head.outputs[0].dtype == "float32"  # recipe: float_output
    attention = [o for o in ops if o.layer.endswith(".attention") and o.name == "SOFTMAX"]
    assert attention and all(o.outputs[0].dtype == "float32" for o in attention)  # float_modules
    check = next(p["report"] for p in report["passes"] if p["pass"] == "edgetpu_check")
    assert check["ops"] == len(ops) and check["compiler_command"] == command
    assert check["tpu_ops"] <= check["supported_ops"] <= check["ops"]
    assert 0 <= check["tpu_flops_share"] <= check["supported_flops_share"] <= 1
    # the ids are int32, so the graph's first op already falls back to the CPU
    assert check["first_cpu_op"]["index"] == 0 and "int32 tensor" in \
        check["first_cpu_op"]["problems"]
    lowered = next(p for p in report["passes"] if p["pass"] == "lower_tt")
    assert lowered["max_logit_change"] <= 1e-5


def test_an_onnx_op_the_target_does_not_list_is_refused(tmp_path):
    data = yaml.safe_load(load_recipe("cpu").path.read_text())
    data["accepted_ops"] = [o for o in data["accepted_ops"] if o != "Gather"]
    recipe = tmp_path / "strict.yaml"
    recipe.write_text(yaml.safe_dump(data))
    source = make_run(tmp_path / "dense", dense=True)
    with pytest.raises(ValueError, match=r"target strict cannot run the ONNX op Gather "
                                         r"\(layer token_embedding, prefill.onnx\)"):
        export_run(source, tmp_path / "bundle", ExportOptions(target=str(recipe), **FAST_EXPORT))
    assert not (tmp_path / "bundle").exists()


# ---------------------------------------------------------------------------- the runner

def test_runtime_choice_prefers_the_bundles_own_and_falls_back(edgetpu_bundle, monkeypatch):
    runner = runner_module()
    manifest = verify_bundle(edgetpu_bundle[1])
    assert runner.choose_runtime(manifest)[0] == "ai-edge-litert"
    installed = {"onnxruntime"}
    monkeypatch.setattr(runner, "_import_runtime",
                        lambda name: object() if name in installed else None)
    assert runner.choose_runtime(manifest)[0] == "onnxruntime"
    installed.clear()
    with pytest.raises(RuntimeError, match=r"pip install ai-edge-litert \(or onnxruntime or "
                                           r"tflite-runtime\)"):
        runner.choose_runtime(manifest)
    with pytest.raises(RuntimeError, match="pip install tflite-runtime"):
        runner.choose_runtime(manifest, "tflite-runtime")
    onnx_only = {**manifest, "files": [f for f in manifest["files"]
                                       if not f["path"].endswith(".tflite")]}
    with pytest.raises(ValueError, match="no graph it runs"):
        runner.choose_runtime(onnx_only, "ai-edge-litert")


def test_an_edgetpu_bundle_says_where_it_runs(edgetpu_bundle):
    _, bundle, _ = edgetpu_bundle
    notes = []
    new = runner_module().generate(str(bundle), [5, 6, 7], 4, int8=True, stop_token_ids=(),
                                   on_note=notes.append)
    assert len(new) == 4
    assert len(notes) == 1 and "model_int8_edgetpu.tflite not found" in notes[0] \
        and "on the CPU" in notes[0]
    (bundle / "edgetpu").mkdir()
    (bundle / "edgetpu" / "model_int8_edgetpu.tflite").write_bytes(b"compiled elsewhere")
    try:  # no libedgetpu here: said, and the int8 graph runs on the CPU
        notes.clear()
        assert runner_module().generate(str(bundle), [5, 6, 7], 4, int8=True,
                                        stop_token_ids=(), on_note=notes.append) == new
        assert "could not be loaded" in notes[0] and "on the CPU" in notes[0]
    finally:
        import shutil
        shutil.rmtree(bundle / "edgetpu")
