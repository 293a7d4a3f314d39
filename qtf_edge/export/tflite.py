"""TFLite artifacts through litert-torch, int8 through ai-edge-quantizer (extra `tflite`).

TFLite runtimes (and the Edge TPU compiler after them) want static shapes, so the graph is
the model at batch 1 over one full window: input_ids (1, context_length) int32 -> logits
(1, context_length, vocab). A runner scores or generates by running whole windows; the
KV-cache graphs are ONNX's (onnx_graphs.py).

    float32        litert_torch.convert of the model
    int8 dynamic   ai-edge-quantizer's dynamic_wi8_afp32 recipe on the float file: int8
                   weights, float activations quantised on the fly (LiteRT's "dynamic
                   range" mode), as the cpu and rpi recipes ask. (litert-torch's own PT2E
                   route quantises the embedding lookup with a zero point that TFLite's
                   EMBEDDING_LOOKUP kernel rejects.)
    int8 full      ai-edge-quantizer's static_wi8_ai8 on the float file, activation ranges
                   calibrated on representative text: int8 tensors throughout the ops the
                   target runs, what the Edge TPU compiler requires.

Validation runs the files with ai-edge-litert's Interpreter; windows shorter than the
context are padded on the right, which a causal model's earlier positions never see.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from qtf_edge.atomic import write_bytes_atomic
from qtf_edge.export.quiet import quiet_tools
from qtf_edge.export.validate import LogitComparison
from qtf_edge.quant import dequantized_copy

EXTRA_HINT = "pip install 'qtf-edge[tflite]'"
# litert-torch's names for the one signature of a converted module and its tensors.
SIGNATURE, INPUT_NAME, OUTPUT_TENSOR_PREFIX = "serving_default", "args_0", "serving_default_output"


def require_extra() -> None:
    """ValueError naming the extra unless every TFLite tool is installed."""
    for module in ("litert_torch", "ai_edge_quantizer.quantizer", "ai_edge_litert.interpreter"):
        _require(module)


class _Logits(torch.nn.Module):
    """ids -> logits only (the model's forward with no cache)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)


def _require(module: str):
    try:
        with quiet_tools():  # importing litert-torch logs from C++ (absl, torchao)
            return __import__(module, fromlist=["_"])
    except ImportError:
        raise ValueError(f"TFLite export needs {module.split('.')[0]}, which is not "
                         f"installed: {EXTRA_HINT}") from None


def export_tflite(model, path: str | Path) -> dict:
    """Write the float32 TFLite file of `model` (eval mode, deploy form) to `path`.
    Weight-only quantised layers have no TFLite kernel that reads their codes: they are
    written as their rounded weights in float32 (the same function; tflite_int8 then
    rounds them to its own int8)."""
    litert_torch = _require("litert_torch")
    model = dequantized_copy(model.eval())
    config = model.config
    ids = torch.zeros((1, config.context_length), dtype=torch.long)
    with quiet_tools(), tempfile.TemporaryDirectory() as tmp:
        edge = litert_torch.convert(_Logits(model), (ids,))
        edge.export(os.path.join(tmp, "model.tflite"))
        data = Path(tmp, "model.tflite").read_bytes()
    write_bytes_atomic(path, data)
    return {"file": Path(path).name, "bytes": len(data),
            "inputs": [{"name": "input_ids", "dtype": "int32",
                        "shape": [1, config.context_length]}],
            "outputs": [{"name": "logits", "dtype": "float",
                         "shape": [1, config.context_length, config.vocab_size]}]}


# Ops whose constant operand is the weight. BATCH_MATMUL is left in float: in a TT chain
# the constant core is its left operand, and LiteRT's hybrid kernel takes int8 only on the
# right (the quantised QTF graph failed to prepare).
DYNAMIC_INT8_OPS = ("FULLY_CONNECTED", "EMBEDDING_LOOKUP")


def _dynamic_recipe(recipes) -> list[dict]:
    """dynamic_wi8_afp32, for DYNAMIC_INT8_OPS only."""
    (entry,) = recipes.dynamic_wi8_afp32()
    return [{**entry, "operation": op} for op in DYNAMIC_INT8_OPS]


def quantize_tflite_dynamic(src: str | Path, dst: str | Path, float_info: dict) -> dict:
    """Write the dynamic-range int8 form of the TFLite file `src` (whose export_tflite
    info is float_info: the same inputs and outputs) to `dst`."""
    quantizer = _require("ai_edge_quantizer.quantizer")
    recipes = _require("ai_edge_quantizer.recipe")
    with quiet_tools(), tempfile.TemporaryDirectory() as tmp:
        job = quantizer.Quantizer(str(src))
        job.load_quantization_recipe(_dynamic_recipe(recipes))
        job.quantize().export_model(os.path.join(tmp, "int8.tflite"), overwrite=True)
        data = Path(tmp, "int8.tflite").read_bytes()
    write_bytes_atomic(dst, data)
    return {**float_info, "file": Path(dst).name, "bytes": len(data),
            "source_bytes": Path(src).stat().st_size}


def quantize_tflite_full_integer(src: str | Path, dst: str | Path, float_info: dict,
                                 windows: list[list[int]], ops: tuple[str, ...],
                                 float_output: bool,
                                 float_ops: tuple[tuple[str, ...], ...] = ()) -> dict:
    """Write the full-integer form of the TFLite file `src` to `dst`: int8 weights and
    int8 activations (ai-edge-quantizer's static_wi8_ai8, per-channel weights), with
    activation ranges calibrated by running the float file on `windows` (each at least
    context + 1 ids; the first context ids are fed).

    ops: the builtin operators to quantise, a target's accepted ops (the rest stay float:
    they run on the host anyway, and some have no usable int8 kernel: an int8 DIV fails
    when a divisor rounds to its zero point). float_output: keep the op that writes the
    graph output (the vocabulary projection) in float, so the logits are not rounded to
    256 levels. float_ops: further ops to keep float, each given by its output names
    (tflite_ops.module_outputs)."""
    quantizer = _require("ai_edge_quantizer.quantizer")
    recipes = _require("ai_edge_quantizer.recipe")
    supported = {op.name for op in recipes.TFLOperationName}
    chosen = [op for op in ops if op in supported]
    if not chosen:
        raise ValueError(f"full-integer quantisation: none of the target's ops "
                         f"({', '.join(ops)}) can be quantised by ai-edge-quantizer")
    (entry,) = recipes.static_wi8_ai8()
    # Recipe entries are regexes searched in an op's scope: its output tensor names, each
    # followed by ";" (matched whole: litert-torch's fused names start with other ops'
    # names). The graph output's name is fixed by litert-torch's serving signature.
    excluded = [OUTPUT_TENSOR_PREFIX] if float_output else []
    excluded += ["".join(re.escape(name) + ";" for name in names) + "$" for names in float_ops]
    pattern = f"^(?!{'|'.join(excluded)}).*" if excluded else ".*"
    length = int(float_info["inputs"][0]["shape"][1])
    data = {SIGNATURE: [{INPUT_NAME: np.asarray(w[:length], dtype=np.int32)[None]}
                        for w in windows]}
    with quiet_tools(), tempfile.TemporaryDirectory() as tmp:
        job = quantizer.Quantizer(str(src))
        job.load_quantization_recipe([{**entry, "regex": pattern, "operation": op}
                                      for op in chosen])
        ranges = job.calibrate(data)
        job.quantize(ranges).export_model(os.path.join(tmp, "int8.tflite"), overwrite=True)
        data = Path(tmp, "int8.tflite").read_bytes()
    write_bytes_atomic(dst, data)
    return {**float_info, "file": Path(dst).name, "bytes": len(data),
            "source_bytes": Path(src).stat().st_size, "quantized_ops": chosen,
            "calibration_windows": len(windows), "float_output": float_output,
            "float_ops": len(float_ops)}


class _Interpreter:
    def __init__(self, path: str | Path, threads: int):
        interpreter = _require("ai_edge_litert.interpreter")
        with quiet_tools():
            self.runner = interpreter.Interpreter(model_path=str(path), num_threads=threads)
            self.runner.allocate_tensors()
        self.input = self.runner.get_input_details()[0]
        self.output = self.runner.get_output_details()[0]
        self.length = int(self.input["shape"][1])

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """ids (T,) with T <= the window -> float logits (T, vocab)."""
        padded = np.zeros((1, self.length), dtype=self.input["dtype"])
        padded[0, :len(ids)] = ids
        self.runner.set_tensor(self.input["index"], padded)
        self.runner.invoke()
        logits = self.runner.get_tensor(self.output["index"])[0, :len(ids)]
        scale, zero_point = self.output["quantization"]
        if scale:  # an int8 output: real = scale * (q - zero_point)
            return scale * (logits.astype(np.float32) - zero_point)
        return logits


@torch.inference_mode()
def validate_tflite(model, path: str | Path, windows: list[list[int]], *, threads: int = 1,
                    reference: dict | None = None) -> dict:
    """The file's logits against torch's on every window: the fields of
    validate.validate_graphs' entries (plus float_perplexity given the float result)."""
    graph = _Interpreter(path, threads)
    comparison = LogitComparison()
    for window in windows:
        ids = torch.tensor(window)
        torch_logits = model(ids[None, :-1])[0].float().numpy()
        comparison.add(graph.logits(ids[:-1].numpy())[None], torch_logits[None],
                       ids[None, 1:].numpy())
    result = comparison.to_dict(Path(path).name, len(windows))
    if reference is not None:
        result["float_perplexity"] = reference["perplexity"]
    return result
