"""Where a decode step's time goes: onnxruntime's profiler on the float decode graph,
grouped by model part.

The exporter names every node after the module that made it ("blocks.0.attention/...",
export/onnx_graphs.py), so each kernel's time in the profiler's trace maps to a part:
embedding, quantum_encoder (encoder, router), attention, ffn, head (final norm and the
vocabulary projection), or other (residual adds, shape arithmetic, nodes the simplifier
made).
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
from pathlib import Path

import onnxruntime

from qtf_edge.export.bundle import runner_module
from qtf_edge.export.onnx_graphs import node_layer

OTHER = "other"
TOP_LEVEL_PARTS = {"token_embedding": "embedding", "position_embedding": "embedding",
                   "ln_final": "head", "head": "head"}
BLOCK_PARTS = {"ln_encoder": "quantum_encoder", "encoder": "quantum_encoder",
               "router": "quantum_encoder", "ln_attention": "attention",
               "attention": "attention", "ln_ffn": "ffn", "ffn": "ffn"}
KERNEL_SUFFIX = "_kernel_time"


HEAD_PRODUCTS = ("MatMul", "Gemm", "MatMulInteger", "Einsum")


def module_part(layer: str | None, op: str = "") -> str:
    """The model part of a node from its module path ("blocks.3.ffn.up" -> "ffn") and op
    type. The tied head (x @ E.T, or a TT embedding's attend) is computed in the model's
    own forward, not in a module of its own, so a product at model level is the head."""
    if layer is None:
        return OTHER
    if layer == "model" and op in HEAD_PRODUCTS:
        return "head"
    names = layer.split(".")
    if names[0] == "blocks" and len(names) > 2:
        return BLOCK_PARTS.get(names[2], OTHER)
    return TOP_LEVEL_PARTS.get(names[0], OTHER)


def kernel_times(trace: list[dict]) -> list[tuple[str, str, float]]:
    """(node name, op type, microseconds) of every kernel run in a profiler trace."""
    return [(event["name"][:-len(KERNEL_SUFFIX)], event.get("args", {}).get("op_name", "?"),
             float(event["dur"]))
            for event in trace if event.get("cat") == "Node"
            and event.get("name", "").endswith(KERNEL_SUFFIX)]


def group_by_part(kernels: list[tuple[str, str, float]], steps: int) -> dict:
    """Per part: ms per step, share of the step, and kernels run per step."""
    total = sum(us for _, _, us in kernels) or 1.0
    parts: dict[str, dict] = {}
    for node, op, us in kernels:
        row = parts.setdefault(module_part(node_layer(node), op), {"us": 0.0, "kernels": 0})
        row["us"] += us
        row["kernels"] += 1
    return {part: {"ms_per_step": row["us"] / steps / 1e3, "share": row["us"] / total,
                   "kernels_per_step": row["kernels"] / steps}
            for part, row in sorted(parts.items(), key=lambda kv: -kv[1]["us"])}


def decode_breakdown(bundle: Path, prompt_ids: list[int], steps: int, threads: int) -> dict:
    """Prefill the prompt, then profile `steps` greedy decode steps of the float graphs."""
    runner = runner_module()
    with tempfile.TemporaryDirectory(prefix="qtf-edge-ort-profile-") as tmp:
        graphs = runner._Graphs(onnxruntime, bundle, threads=threads,
                                profile_prefix=os.path.join(tmp, "decode"))
        logits, past = graphs.run_prefill(prompt_ids)
        for _ in range(steps):
            logits, past = graphs.run_decode(int(logits.argmax()), past)
        trace = json.loads(Path(graphs.decode.end_profiling()).read_text())
    kernels = kernel_times(trace)
    ops = collections.Counter()
    for _, op, us in kernels:
        ops[op] += us
    return {"graph": "decode.onnx", "steps": steps, "threads": threads,
            "method": "onnxruntime's profiler (it slows every kernel, so read the shares)",
            "ms_per_step": sum(us for _, _, us in kernels) / steps / 1e3,
            "parts": group_by_part(kernels, steps),
            "top_ops": [{"op": op, "ms_per_step": us / steps / 1e3}
                        for op, us in ops.most_common(8)]}
