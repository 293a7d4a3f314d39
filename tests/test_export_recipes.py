"""Export recipes (export/*.yaml): the shipped ones load; a bad one is a one-line error
naming the file and the field; an unknown target lists the known ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qtf_edge.cost.profiles import list_profiles
from qtf_edge.export.recipes import (
    FORMATS,
    PASSES,
    Recipe,
    RecipeError,
    known_targets,
    load_recipe,
)
from qtf_edge.resources import data_dir

EXPECTED_PROFILES = {"cpu": "cpu_xeon", "rpi": "rpi4", "edgetpu": "edge_tpu"}


def test_known_targets_are_the_shipped_files():
    assert known_targets() == sorted(p.stem for p in data_dir("export").glob("*.yaml"))
    assert set(EXPECTED_PROFILES) <= set(known_targets())


@pytest.mark.parametrize("target", sorted(EXPECTED_PROFILES))
def test_shipped_recipe_loads_and_names_an_existing_profile(target):
    recipe = load_recipe(target)
    assert isinstance(recipe, Recipe) and recipe.name == target
    assert recipe.profile == EXPECTED_PROFILES[target] and recipe.profile in list_profiles()
    assert recipe.profile_path.is_file()
    assert recipe.load_profile().name == recipe.profile
    assert set(recipe.alternate_profiles) <= set(list_profiles())
    assert set(recipe.formats) <= set(FORMATS) and set(recipe.passes) <= set(PASSES)
    assert recipe.passes[-1] == "bundle" and recipe.opset == 18
    assert recipe.validation.float_top1_agreement == 0.999
    assert recipe.validation.int8_perplexity_ratio == 1.03
    assert recipe.threads >= 1 and recipe.accepted_ops
    assert set(recipe.quantization) == {f for f in recipe.formats if f.endswith("_int8")}
    # a path loads the same recipe
    assert load_recipe(recipe.path) == recipe
    assert load_recipe(str(recipe.path)) == recipe


def test_cpu_and_rpi_use_onnxruntime_and_dynamic_int8():
    for target in ("cpu", "rpi"):
        recipe = load_recipe(target)
        assert recipe.runtime == "onnxruntime" and recipe.formats[:2] == ("onnx", "onnx_int8")
        assert recipe.quantization["onnx_int8"].mode == "dynamic"
        assert {"MatMul", "Gather", "Softmax", "MatMulInteger"} <= set(recipe.accepted_ops)
        assert recipe.compiler_command is None
    assert "rpi5" in load_recipe("rpi").alternate_profiles
    rpi = load_recipe("rpi")  # and the LiteRT window graph, float and dynamic-range int8
    assert rpi.formats[2:] == ("tflite", "tflite_int8")
    assert rpi.quantization["tflite_int8"].mode == "dynamic_range"


def test_edgetpu_recipe():
    recipe = load_recipe("edgetpu")
    assert recipe.constraints.static_shapes and recipe.constraints.int8_tensors
    assert recipe.constraints.max_nontrivial_dims == 3
    quant = recipe.quantization["tflite_int8"]
    assert quant.mode == "full_integer" and quant.representative_dataset == "train"
    assert quant.float_output  # the vocabulary projection stays on the host, in float
    assert quant.float_modules == ("CausalSelfAttention", "QuantumKernelAttention")
    # TFLite builtin names, as the .tflite file spells them, not ONNX ones
    assert {"FULLY_CONNECTED", "SOFTMAX", "RESHAPE", "TRANSPOSE"} <= set(recipe.accepted_ops)
    assert "MatMul" not in recipe.accepted_ops and "BATCH_MATMUL" not in recipe.accepted_ops
    assert recipe.passes.index("edgetpu_check") > recipe.passes.index("tflite_int8")
    assert recipe.compiler_argv("out/decode_int8.tflite", "out") == [
        "edgetpu_compiler", "-s", "-o", "out", "out/decode_int8.tflite"]


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(RecipeError) as info:
        load_recipe("jetson")
    message = str(info.value)
    assert "'jetson'" in message and "\n" not in message
    for target in known_targets():
        assert target in message


def _base() -> dict:
    return yaml.safe_load(load_recipe("cpu").path.read_text())


def _write(tmp_path: Path, data, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_a_user_recipe_file_needs_no_code(tmp_path):
    data = _base()
    data["description"] = "my board"
    data["threads"] = 2
    recipe = load_recipe(_write(tmp_path, data, "myboard.yaml"))
    assert recipe.name == "myboard" and recipe.threads == 2
    # a profile given by path is resolved beside the recipe
    (tmp_path / "board.yaml").write_text(data_dir("profiles").joinpath("rpi5.yaml").read_text())
    data["profile"] = "board.yaml"
    assert load_recipe(_write(tmp_path, data)).load_profile().name == "rpi5"


def _set(key, value):
    def change(d):
        d[key] = value
    return change


def _drop(key):
    def change(d):
        del d[key]
    return change


def _nested(outer, key, value):
    def change(d):
        d.setdefault(outer, {})[key] = value
    return change


@pytest.mark.parametrize("change, field, expected", [
    (_set("colour", "blue"), "colour", "not a known field"),
    (_drop("profile"), "profile", "missing"),
    (_set("profile", "cray1"), "profile", "not a known hardware profile"),
    (_set("profile", "profiles/absent.yaml"), "profile", "does not exist"),
    (_set("formats", ["onnx", "pdf"]), "formats[1]", "not known"),
    (_set("formats", "onnx"), "formats", "list"),
    (_set("formats", ["onnx", "onnx"]), "formats[1]", "twice"),
    (_set("opset", "18"), "opset", "integer"),
    (_set("opset", 11), "opset", ">= 18"),
    (_set("threads", 0), "threads", "positive integer"),
    (_set("threads", True), "threads", "positive integer"),
    (_set("runtime", "tensorrt"), "runtime", "must be one of"),
    (_set("runtime", "ai-edge-litert"), "runtime", "runs tflite"),
    (_set("accepted_ops", []), "accepted_ops", "non-empty list"),
    (_set("accepted_ops", ["MatMul", 3]), "accepted_ops[1]", "non-empty string"),
    (_set("passes", ["onnx", "deploy_form", "onnx_int8", "bundle"]), "passes[1]",
     "comes after"),
    (_set("passes", ["deploy_form", "onnx", "onnx_int8", "validate"]), "passes",
     "end with 'bundle'"),
    (_set("passes", ["deploy_form", "onnx", "bundle"]), "passes", "lacks 'onnx_int8'"),
    (_set("passes", ["onnx", "onnx_int8", "compile", "bundle"]), "passes[2]", "not known"),
    (_set("quantization", {}), "quantization.onnx_int8", "missing"),
    (_set("quantization", {"onnx_int8": "fuzzy"}), "quantization.onnx_int8", "must be one of"),
    (_set("quantization", {"onnx_int8": "dynamic", "tflite_int8": "full_integer"}),
     "quantization.tflite_int8", "not in formats"),
    (_set("quantization", {"onnx_int8": {"mode": "static"}}),
     "quantization.onnx_int8.representative_dataset", "non-empty string"),
    (_set("quantization", {"onnx_int8": {"mode": "dynamic", "representative_dataset": "valid"}}),
     "quantization.onnx_int8.representative_dataset", "only used by calibrated modes"),
    (_set("quantization", {"onnx_int8": {"mode": "dynamic", "float_output": True}}),
     "quantization.onnx_int8.float_output", "only applies to mode full_integer"),
    (_set("quantization", {"onnx_int8": {"mode": "dynamic", "float_output": "yes"}}),
     "quantization.onnx_int8.float_output", "true or false"),
    (_set("quantization", {"onnx_int8": {"mode": "dynamic", "float_modules": ["Block"]}}),
     "quantization.onnx_int8.float_modules", "only applies to mode full_integer"),
    (_set("quantization", {"onnx_int8": {"mode": "dynamic", "float_modules": ["a.b"]}}),
     "quantization.onnx_int8.float_modules", "Python class names"),
    (_nested("constraints", "static_shapes", "yes"), "constraints.static_shapes", "true or false"),
    (_nested("constraints", "fast", True), "constraints.fast", "not a known constraint"),
    (_nested("validation", "float_top1_agreement", 1.5), "validation.float_top1_agreement",
     "(0, 1]"),
    (_nested("validation", "int8_perplexity_ratio", 0.9), "validation.int8_perplexity_ratio",
     ">= 1"),
    (_nested("validation", "int8_perplexity_ratio", "low"), "validation.int8_perplexity_ratio",
     "number"),
    (_set("validation", {"float_top1_agreement": 0.99}), "validation.int8_perplexity_ratio",
     "missing"),
    (_set("compiler_command", "edgetpu_compiler {model}"), "compiler_command",
     "{out_dir}"),
    (_set("compiler_command", "cc -o {out_dir} {model} {flags}"), "compiler_command",
     "unknown placeholder {flags}"),
])
def test_bad_recipe_is_one_line_naming_file_and_field(tmp_path, change, field, expected):
    data = _base()
    change(data)
    path = _write(tmp_path, data)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field} "), message
    assert expected in message, message


def test_edgetpu_check_needs_a_compiler_command(tmp_path):
    data = yaml.safe_load(load_recipe("edgetpu").path.read_text())
    del data["compiler_command"]
    with pytest.raises(RecipeError, match=r"compiler_command is missing"):
        load_recipe(_write(tmp_path, data))


@pytest.mark.parametrize("text, expected", [
    ("formats: [onnx\n", "malformed YAML at line"),
    ("- just\n- a list\n", "(top level) must be a mapping"),
])
def test_unparseable_recipe(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError, match=str(path)) as info:
        load_recipe(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="cannot read file") as info:
        load_recipe(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in str(info.value)
