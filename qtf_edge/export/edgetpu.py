"""edgetpu_check: which ops of the full-integer TFLite graph the Edge TPU would run.

The Edge TPU compiler (edgetpu_compiler) is not installable here (Coral distributes it
through its own apt repository, for x86-64 Debian and Ubuntu), so this pass checks the
graph against what the Coral documentation states the compiler needs (export/edgetpu.yaml): the operator
is on the supported list, every tensor it touches is 8-bit (an int32 constant is a
quantised bias, which the int8 spec allows), no tensor has more non-trivial dimensions
than the recipe allows, and shapes are static.

The compiler maps one contiguous run of ops from the graph's first op: at the first
operation it cannot map, that operation and everything after it stay on the CPU, even
supported ones (Coral docs, "TensorFlow models on the Edge TPU", section on compiling and
partitioning). So the report gives both the
ops (and FLOP share) the compiler would actually place on the TPU, the prefix before the
first unsupported op, and the share that is supported wherever it sits. A model the
compiler would refuse outright (dynamic shapes) is an error naming the tensor and layer.
"""

from __future__ import annotations

from pathlib import Path

from qtf_edge.export.tflite_ops import TFLiteOp, read_ops

EIGHT_BIT = ("int8", "uint8")
BIAS = ("int32",)  # the TFLite int8 spec's bias type for FULLY_CONNECTED / CONV_2D


def op_problems(op: TFLiteOp, recipe) -> list[str]:
    """Why the Edge TPU compiler would leave `op` to the CPU (empty: it maps)."""
    problems = []
    if op.name not in recipe.accepted_ops:
        problems.append(f"{op.name} is not a supported operation")
    limit = recipe.constraints.max_nontrivial_dims
    for tensor in op.inputs + op.outputs:
        allowed = EIGHT_BIT + (BIAS if tensor.constant else ())
        if recipe.constraints.int8_tensors and tensor.dtype not in allowed:
            problems.append(f"{tensor.dtype} tensor")
        if limit is not None and tensor.nontrivial_dims > limit:
            problems.append(f"{tensor.nontrivial_dims} dimensions above 1 (at most {limit})")
    return list(dict.fromkeys(problems))


def _check_static(ops: list[TFLiteOp], path: Path, target: str) -> None:
    for op in ops:
        for tensor in op.inputs + op.outputs:
            if tensor.dynamic:
                raise ValueError(f"{path.name}: target {target} needs static shapes, but "
                                 f"{op.name} (layer {op.layer or '?'}) has the dynamic tensor "
                                 f"{tensor.name!r} {list(tensor.shape)}")


def check_edgetpu(path: str | Path, recipe, model=None) -> dict:
    """The report of the edgetpu_check pass for the int8 TFLite file at `path`. `model`
    (the torch model it was exported from) turns tensor scopes into layer names."""
    return edgetpu_report(read_ops(path, model), recipe, Path(path))


def edgetpu_report(ops: list[TFLiteOp], recipe, path: Path) -> dict:
    """check_edgetpu's report for ops already read (in execution order) from `path`.
    ValueError if the recipe demands static shapes and a tensor is dynamic."""
    if recipe.constraints.static_shapes:
        _check_static(ops, path, recipe.name)
    problems = [op_problems(op, recipe) for op in ops]
    total = sum(op.flops for op in ops) or 1
    first = next((i for i, found in enumerate(problems) if found), len(ops))
    fallback: dict[str, dict] = {}
    for op, found in zip(ops, problems):
        if found:
            row = fallback.setdefault(op.name, {"op": op.name, "count": 0, "flops": 0,
                                                "first_layer": op.layer, "problems": []})
            row["count"] += 1
            row["flops"] += op.flops
            row["problems"] = list(dict.fromkeys(row["problems"] + found))
    for row in fallback.values():
        row["flops_share"] = row["flops"] / total
    return {
        "file": path.name, "ops": len(ops), "flops": total,
        "tpu_ops": first, "tpu_flops_share": sum(op.flops for op in ops[:first]) / total,
        "supported_ops": sum(1 for found in problems if not found),
        "supported_flops_share": sum(op.flops for op, found in zip(ops, problems)
                                     if not found) / total,
        "first_cpu_op": None if first == len(ops) else {**ops[first].as_dict(),
                                                         "problems": problems[first]},
        "cpu_ops": sorted(fallback.values(), key=lambda row: -row["flops"]),
    }


def summary(report: dict) -> str:
    """One line for the export's printout."""
    line = (f"edgetpu: {report['tpu_ops']} of {report['ops']} ops "
            f"({report['tpu_flops_share']:.1%} of FLOPs) would run on the Edge TPU; "
            f"{report['supported_flops_share']:.1%} of FLOPs are in supported ops")
    first = report["first_cpu_op"]
    if first is not None:
        line += (f"; the CPU takes over at op {first['index']}, {first['op']} in "
                 f"{first['layer'] or '?'} ({'; '.join(first['problems'])})")
    return line
