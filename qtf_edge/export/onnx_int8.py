"""Dynamic int8 quantisation of an ONNX graph (ONNX Runtime's quantize_dynamic).

Weights of MatMul and Gemm become int8, one scale per output channel; activations stay
float32 and are quantised on the fly at each call, so no calibration data is needed
(ONNX Runtime recommends this mode for transformers). Quantised are the ops whose second
input is a constant 2-D matrix: every dense projection and LM head, and a TT layer
wherever the exporter folded its cores into W. Left in float: a batched (3-D) constant,
whose per-channel zero points ONNX Runtime's MatMulInteger rejects at run time, and TT
chains, whose constant cores are the first input (and are tiny).

No quant_pre_process: on these graphs (already shape-inferred and simplified by the
export) it quantised no more ops and only added a few nodes and bytes.

Weight-only layers (MatMulNBits, written by the export from the run's own codes) keep
their weights and get accuracy_level 4: their activations are quantised to int8 per block
at each call too, the same contract as the dynamic int8 ops, and the kernel ONNX Runtime
runs fastest on x86 (int8 weights with float activations took 63 us per call on a 128 x 384
layer here, 8 us at accuracy_level 4; benchmarks/RESULTS.md). The float graph keeps the
exact float-activation kernel that torch's rounding is checked against.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnx import helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from qtf_edge.export.onnx_graphs import graph_info, save_onnx
from qtf_edge.export.quiet import quiet_tools

QUANTIZED_OPS = ["MatMul", "Gemm"]


def quantize_dynamic_int8(src: str | Path, dst: str | Path) -> dict:
    """Write the int8 form of the graph `src` to `dst` (atomically, weights inside).

    Returns {"file", "source_bytes", "bytes", "ratio" (bytes / source_bytes), "nodes",
    "op_types"}. ValueError if there is no file at `src`.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ValueError(f"no ONNX graph at {src}; expected a .onnx file (run the export first)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    source = onnx.load(src)
    # The quantiser writes to a path: a temporary one beside dst, then one atomic write.
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".int8-") as tmp:
        quantized = Path(tmp) / "int8.onnx"
        with quiet_tools():
            quantize_dynamic(source, quantized, op_types_to_quantize=QUANTIZED_OPS,
                             per_channel=True, weight_type=QuantType.QInt8,
                             nodes_to_exclude=batched_weight_nodes(source))
        model = onnx.load(quantized)
    int8_activations(model)
    size = save_onnx(model, dst)
    source_bytes = src.stat().st_size
    return {**graph_info(model, dst.name), "source_bytes": source_bytes, "bytes": size,
            "ratio": size / source_bytes}


INT8_ACCURACY_LEVEL = 4  # MatMulNBits: compute with int8-quantised activations


def int8_activations(model: onnx.ModelProto) -> None:
    """Every MatMulNBits node of `model` at INT8_ACCURACY_LEVEL (in place)."""
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute("accuracy_level",
                                                                INT8_ACCURACY_LEVEL)])


def batched_weight_nodes(model: onnx.ModelProto) -> list[str]:
    """MatMul/Gemm nodes whose second input is a constant of more than two dims."""
    ndim = {t.name: len(t.dims) for t in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type in QUANTIZED_OPS and ndim.get(node.input[1], 2) > 2]
