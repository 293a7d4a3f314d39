"""Export a model as two ONNX graphs with tensor KV caches: prefill.onnx and decode.onnx.

    info = export_onnx(model, "out/")  # {"prefill": {...}, "decode": {...}}

Steps per graph: torch.onnx.export(dynamo=True) of the wrapper in graphs.py with dynamic
batch, sequence and past_sequence axes; onnxslim (constant folding, fusions); the ONNX
checker; an atomic write with the weights inside the .onnx file (no external data: these
models are small, and one file per graph is what a bundle ships).

Only what an exporter can express may be exported: a QTF model must be in its deploy form
(folded circuits, B-spline activations, Jacobi eigenvalues; made by `qtf-edge distill`).
Dense and TT-only models have nothing simulated and export as they are.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import onnx
import onnxslim
import torch

from qtf_edge.atomic import write_bytes_atomic
from qtf_edge.distill.deploy import has_simulation
from qtf_edge.export.graphs import DecodeGraph, PrefillGraph, input_names, output_names
from qtf_edge.export.lowering import apply_lowering
from qtf_edge.export.onnx_weight_only import lower_weight_only
from qtf_edge.export.quiet import quiet_tools
from qtf_edge.quant import dequantized_copy, quantized_layers

PROTOBUF_LIMIT = 2**31  # bytes: one ModelProto cannot be serialised beyond 2 GB
# Example sizes to trace with. Distinct values, all > 1: a size of 1, or two inputs sharing
# a size, could be specialised or unified by the tracer; the graphs are dynamic in all.
EXAMPLE_BATCH, EXAMPLE_PAST, EXAMPLE_NEW = 2, 5, 3
# Dynamic axes by name; the exporter makes each a Dim.DYNAMIC and names the ONNX dim after it.
BATCH, SEQUENCE, PAST_SEQUENCE = "batch", "sequence", "past_sequence"
NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # node metadata: the module path, outermost first


def check_exportable(model: torch.nn.Module) -> None:
    """ValueError unless the model can be traced: nothing left to simulate, small enough."""
    if has_simulation(model):
        raise ValueError("the model is in its simulated form (circuits, DARUAN activations); "
                         "expected the deploy form: run `qtf-edge distill` first")
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if size >= PROTOBUF_LIMIT:
        raise ValueError(f"the model's weights take {size / 2**30:.2f} GiB; expected under "
                         f"2 GiB, the most one .onnx file can hold")
    if model.config.context_length < EXAMPLE_PAST + EXAMPLE_NEW:
        raise ValueError(f"context_length={model.config.context_length} is too short to "
                         f"export; expected at least {EXAMPLE_PAST + EXAMPLE_NEW}")


def name_nodes_by_module(model: onnx.ModelProto) -> None:
    """Prefix every node's name with the module that made it ("blocks.0.attention/..."),
    from the dynamo exporter's name-scope metadata. onnxslim drops the metadata but keeps
    names, so errors can name a node's layer and onnxruntime's profiler can group time by
    module (profile/operators.py)."""
    for node in model.graph.node:
        scopes = next((ast.literal_eval(p.value) for p in node.metadata_props
                       if p.key == NAME_SCOPES), None)
        if scopes:
            # [wrapper, "model", "model.<layer>", ..., the aten op]: the deepest module
            module = scopes[-2] if len(scopes) > 1 else scopes[-1]
            if module.startswith("_"):  # the exporter's name for "no module" (shape ops)
                module = "model"
            node.name = f"{module.removeprefix('model.') or 'model'}/{node.name}"


def node_layer(node_name: str) -> str | None:
    """The module a node came from (None for nodes the simplifier made)."""
    return node_name.split("/", 1)[0] if "/" in node_name else None


def op_name(node: onnx.NodeProto) -> str:
    """The op type, as `domain:Op` outside the default domain (how recipes list ops)."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"


def op_layers(model: onnx.ModelProto) -> dict[str, str]:
    """op name -> the module of its first node that has one."""
    layers: dict[str, str] = {}
    for node in model.graph.node:
        layer = node_layer(node.name)
        if layer is not None:
            layers.setdefault(op_name(node), layer)
    return layers


def _to_onnx(graph: torch.nn.Module, args: tuple, dynamic_shapes: dict, inputs: list[str],
             outputs: list[str], opset: int, cache_length: str) -> onnx.ModelProto:
    with quiet_tools(), torch.no_grad():
        program = torch.onnx.export(graph, args, dynamo=True, input_names=inputs,
                                    output_names=outputs, dynamic_shapes=dynamic_shapes,
                                    opset_version=opset, verbose=False, report=False)
        proto = program.model_proto  # a fresh conversion at each access: take it once
        name_nodes_by_module(proto)
        model = onnxslim.slim(proto)
    # The exporter names each present's length after its own sum, in either order
    # ("sequence + past_sequence" in one layer, "past_sequence + sequence" in the next);
    # one label for all reads as the contract does.
    for output in model.graph.output[1:]:
        output.type.tensor_type.shape.dim[2].dim_param = cache_length
    return model


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def graph_info(model: onnx.ModelProto, file: str) -> dict:
    """What a graph looks like: I/O names and shapes (symbolic dims as strings), ops, and
    the layer each op type first comes from."""
    graph = model.graph
    ops = collections.Counter(op_name(node) for node in graph.node)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {"file": file, "opset": opset, "nodes": len(graph.node),
            "inputs": {v.name: _dims(v) for v in graph.input},
            "outputs": {v.name: _dims(v) for v in graph.output},
            "op_types": dict(sorted(ops.items())), "op_layers": op_layers(model)}


def save_onnx(model: onnx.ModelProto, path: Path) -> int:
    """Check the graph and write it atomically, weights inside; returns its size in bytes."""
    if model.ByteSize() >= PROTOBUF_LIMIT:
        raise ValueError(f"{path.name} would be {model.ByteSize() / 2**30:.2f} GiB; expected "
                         f"under 2 GiB, the most one .onnx file can hold")
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    write_bytes_atomic(path, data)
    return len(data)


def export_onnx(model: torch.nn.Module, out_dir: str | Path, opset: int = 18,
                lowerings: dict[str, list[dict]] | None = None) -> dict:
    """Write out_dir/prefill.onnx and out_dir/decode.onnx; returns {"prefill": info,
    "decode": info}, info as `graph_info` gives it plus "bytes".

    lowerings: per graph name, the TT lowering rows (export/lowering.py) to trace it with;
    a graph runs one path per TT product at every size, so prefill and decode each get
    the path that suits their token count. None: the model's lowerings as they are.

    Weight-only quantised layers (config.weight_bits) are traced with their rounded
    weights in float and then read from their codes (onnx_weight_only.py); info gains
    "weight_only", one row per such layer.

    The model is put in eval mode. ValueError for a simulated-form QTF model, weights of
    2 GB or more, or a context too short to trace.
    """
    check_exportable(model)
    model.eval()
    quantized = model
    if quantized_layers(model):
        model = dequantized_copy(model)
    config, out_dir = model.config, Path(out_dir)
    batch = {0: BATCH}
    generator = torch.Generator().manual_seed(0)  # leaves the caller's random state alone
    past_ids, new_ids = (torch.randint(0, config.vocab_size, (EXAMPLE_BATCH, length),
                                       generator=generator)
                         for length in (EXAMPLE_PAST, EXAMPLE_NEW))
    with torch.no_grad():  # decode's example cache: a real one, as prefill makes it
        pasts = PrefillGraph(model)(past_ids)[1:]
    traces = {
        "prefill": lambda: _to_onnx(PrefillGraph(model), (past_ids,),
                                    {"input_ids": {**batch, 1: SEQUENCE}},
                                    input_names(config, decode=False), output_names(config),
                                    opset, SEQUENCE),
        "decode": lambda: _to_onnx(DecodeGraph(model), (new_ids, *pasts),
                                   {"input_ids": {**batch, 1: SEQUENCE},
                                    "pasts": tuple({**batch, 2: PAST_SEQUENCE} for _ in pasts)},
                                   input_names(config, decode=True), output_names(config),
                                   opset, f"{PAST_SEQUENCE} + {SEQUENCE}"),
    }
    info = {}
    for name, trace in traces.items():
        if lowerings is not None:
            apply_lowering(model, lowerings[name])
        graph = trace()
        weight_only = lower_weight_only(graph, quantized)
        file = f"{name}.onnx"
        info[name] = {**graph_info(graph, file), "bytes": save_onnx(graph, out_dir / file)}
        if weight_only:
            info[name]["weight_only"] = weight_only
    return info
