"""The operator table of a .tflite file: what each op is, where it came from, what it costs.

    ops = read_ops("model_int8.tflite", model)   # [TFLiteOp, ...] in execution order

LiteRT's Python interpreter lists a model's ops and tensors (`_get_ops_details`, the table
TensorFlow's own model analyser prints); it is read with the default XNNPACK delegate
off, so every op appears under its builtin name instead of one DELEGATE node. Nothing here
is Edge TPU specific: edgetpu.py judges the table against a recipe.

Layers: litert-torch names each tensor after the module scope that made it
("..._Logits/...QTensorFormer_model/...Block_0/...QuantumTokenEncoder_encoder;42"); the
attribute names are walked through the torch model to give "blocks.0.encoder".

FLOPs: a matrix product (FULLY_CONNECTED, BATCH_MATMUL) counts 2*M*N*K, a convolution
2 * output elements * kernel elements; every other op one per output element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from qtf_edge.export.quiet import quiet_tools

GRAPH_OUTPUT = "(graph output)"


@dataclass(frozen=True)
class TFLiteTensor:
    name: str
    dtype: str                   # numpy name: int8, int32, float32, ...
    shape: tuple[int, ...]
    dynamic: bool                # its shape signature has an unknown (-1) dimension
    constant: bool               # a weight: no op writes it and it is not a graph input

    @property
    def nontrivial_dims(self) -> int:
        return sum(1 for d in self.shape if d > 1)


@dataclass(frozen=True)
class TFLiteOp:
    index: int                   # position in execution order
    name: str                    # builtin operator name, e.g. FULLY_CONNECTED
    layer: str                   # module path in the torch model, or GRAPH_OUTPUT / ""
    inputs: tuple[TFLiteTensor, ...]
    outputs: tuple[TFLiteTensor, ...]
    flops: int

    def as_dict(self) -> dict:
        return {"index": self.index, "op": self.name, "layer": self.layer, "flops": self.flops}


def _module_path(model: torch.nn.Module | None, attributes: list[str]) -> str:
    """Attribute chain -> dotted module name; a container (ModuleList) the scope skips is
    put back by looking the attribute up in the current module's containers."""
    if model is None:
        return ".".join(attributes)
    path, module = [], model
    for attribute in attributes:
        children = dict(module.named_children())
        if attribute not in children:
            holder = next((name for name, child in children.items()
                           if attribute in dict(child.named_children())), None)
            if holder is None:
                return ".".join(path + [attribute])
            path.append(holder)
            children = dict(children[holder].named_children())
        path.append(attribute)
        module = children[attribute]
    return ".".join(path)


def layer_of(tensor_name: str, model: torch.nn.Module | None = None) -> str:
    """Module path of the layer that made a litert-torch tensor ("" if the name has none).
    Scope segments (joined by "/") read "<module>.<Class>_<attribute>"; the first two are the export
    wrapper and the model itself."""
    # A fused op's tensor joins several names with ";"; the deepest scope is the op's own.
    scopes = [part.split("/") for part in tensor_name.split(";") if "/" in part]
    attributes = []
    for segment in max(scopes, key=len, default=[])[2:]:
        attribute = segment.rsplit(".", 1)[-1].partition("_")[2]
        if not attribute:  # not a module scope (an op's own suffix)
            break
        attributes.append(attribute)
    return _module_path(model, attributes)


def _flops(name: str, inputs: tuple[TFLiteTensor, ...], outputs: tuple[TFLiteTensor, ...]
           ) -> int:
    out = outputs[0].shape if outputs else ()
    elements = math.prod(out)
    if name == "FULLY_CONNECTED":  # weights (N, K)
        return 2 * elements * inputs[1].shape[-1]
    if name == "BATCH_MATMUL":  # lhs (..., M, K) or, adjoint, (..., K, M)
        lhs = inputs[0].shape
        k = lhs[-1] if len(lhs) < 2 or len(out) < 2 or lhs[-2] == out[-2] else lhs[-2]
        return 2 * elements * k
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"):
        kernel = inputs[1].shape
        return 2 * elements * math.prod(kernel[1:3]) * (kernel[3] if name == "CONV_2D" else 1)
    return elements


def read_ops(path, model: torch.nn.Module | None = None) -> list[TFLiteOp]:
    """Every op of the .tflite file at `path` in execution order (the main subgraph)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with quiet_tools():
        interpreter = Interpreter(
            model_path=str(path),
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    details = interpreter._get_ops_details()  # noqa: SLF001 - LiteRT's only op listing
    produced = {i for op in details for i in op["outputs"]}
    graph_inputs = {t["index"] for t in interpreter.get_input_details()}
    graph_outputs = {t["index"] for t in interpreter.get_output_details()}
    tensors = {}
    for t in interpreter.get_tensor_details():
        signature = t.get("shape_signature", t["shape"])
        tensors[t["index"]] = TFLiteTensor(
            name=t["name"], dtype=np.dtype(t["dtype"]).name,
            shape=tuple(int(d) for d in t["shape"]),
            dynamic=bool(np.any(np.asarray(signature) < 0)),
            constant=t["index"] not in produced and t["index"] not in graph_inputs)
    ops = []
    for op in details:
        inputs = tuple(tensors[i] for i in op["inputs"] if i >= 0)  # -1: an omitted input
        outputs = tuple(tensors[i] for i in op["outputs"])
        if any(i in graph_outputs for i in op["outputs"]):
            layer = GRAPH_OUTPUT
        else:
            layer = layer_of(outputs[0].name, model) if outputs else ""
        ops.append(TFLiteOp(index=op["index"], name=op["op_name"], layer=layer,
                            inputs=inputs, outputs=outputs,
                            flops=_flops(op["op_name"], inputs, outputs)))
    return ops


def module_outputs(path, model: torch.nn.Module, class_names: tuple[str, ...]
                   ) -> list[tuple[str, ...]]:
    """Per op of the .tflite file at `path` that a module of one of these classes makes
    itself (its sub-layers' ops excluded): the names of its outputs."""
    modules = dict(model.named_modules())
    return [tuple(tensor.name for tensor in op.outputs) for op in read_ops(path, model)
            if op.layer in modules and type(modules[op.layer]).__name__ in class_names]
