"""`export_run`: a run folder in, a self-checking bundle out, driven by a target's recipe.

The recipe (export/<target>.yaml) names the passes in order. Each torch pass is a function
from model to model, reported by the model's figures before and after on the target's
profile (params, FLOPs, estimated latency) and the largest logit change it caused on the
calibration windows:

    deploy_form   fold circuits and fit splines (distill) when the checkpoint simulates
                  anything; refused unless asked (--distill), as distillation is a
                  quality decision the user should see
    lower_tt      per TT layer and graph (prefill at the context length, decode at one
                  token), keep the chain or materialise W (lowering.py)

then the artifact passes: onnx (prefill + decode graphs, each op checked against the
recipe's accepted ops), onnx_int8 (dynamic int8), tflite and tflite_int8 (one fixed-window
graph, float and int8: dynamic-range, or full-integer calibrated on representative text;
tflite.py), validate (each artifact against torch on validation text, --data; thresholds
from the recipe), edgetpu_check (what of the full-integer graph the Edge TPU would run;
edgetpu.py), bundle (staged beside --out, renamed into place only when every pass
succeeded; its manifest carries the decode step's workload for run.py --calibrate,
workload.py).
"""

from __future__ import annotations

import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qtf_edge.compress.run import size_limit
from qtf_edge.data import default_corpus, load_tokenizer
from qtf_edge.data.corpus import SPLITS
from qtf_edge.derived import calibration_windows
from qtf_edge.distill import distill_model, has_simulation
from qtf_edge.evaluate import window_batches
from qtf_edge.export.bundle import check_bundle_out, graph_io, runner_module, write_bundle
from qtf_edge.export.edgetpu import check_edgetpu, summary
from qtf_edge.export.lowering import apply_lowering, choose_lowering
from qtf_edge.export.onnx_graphs import export_onnx
from qtf_edge.export.onnx_int8 import quantize_dynamic_int8
from qtf_edge.export.recipes import load_recipe
from qtf_edge.export.tflite import (
    export_tflite,
    quantize_tflite_dynamic,
    quantize_tflite_full_integer,
    require_extra,
    validate_tflite,
)
from qtf_edge.export.tflite_ops import module_outputs
from qtf_edge.export.validate import check_thresholds, validate_graphs
from qtf_edge.export.workload import MANIFEST_KEY as WORKLOAD_KEY
from qtf_edge.export.workload import manifest_entry as workload_entry
from qtf_edge.runs import load_run
from qtf_edge.train.budget import measure

IMPLEMENTED_PASSES = ("deploy_form", "lower_tt", "onnx", "onnx_int8", "tflite", "tflite_int8",
                      "validate", "edgetpu_check", "bundle")
COMPARED_WINDOWS = 8  # calibration windows a torch pass's logit change is measured on
REPORT_KEY = "export"
TFLITE_INT8_FILE = "model_int8.tflite"


@dataclass(frozen=True)
class ExportOptions:
    target: str = "cpu"                # a recipe name (export/*.yaml) or a recipe file
    distill: bool = False              # run the deploy-form pass on a simulated checkpoint
    calib: str | None = None           # distillation text (default: shipped train excerpt)
    calib_tokens: int = 4096
    data: str | None = None            # validation text (default: shipped valid excerpt)
    eval_tokens: int = 8192            # validation tokens each artifact is scored on
    decode_windows: int = 4            # windows the decode graph is validated on
    decode_steps: int = 32             # decode calls per window
    # Weight MB the TT lowering may grow the model to; None: a compressed run's own size
    # budget (its compress_report.json), else no limit.
    max_size_mb: float | None = None
    # Time both TT lowerings in torch on this machine instead of estimating them; None: only
    # for the cpu target, the one whose device class is the exporting machine.
    measure_lowering: bool | None = None
    threads: int = 1                   # onnxruntime threads for validation here
    force: bool = False                # replace an existing bundle


def _check_implemented(recipe) -> None:
    missing = [p for p in recipe.passes if p not in IMPLEMENTED_PASSES]
    if missing:
        raise ValueError(f"target {recipe.name}: passes {', '.join(missing)} are not implemented "
                         f"in this version")
    onnx_int8 = recipe.quantization.get("onnx_int8")
    if onnx_int8 is not None and onnx_int8.mode != "dynamic":
        raise ValueError(f"target {recipe.name}: onnx_int8 mode {onnx_int8.mode} is not "
                         f"implemented in this version (dynamic is)")
    if any(p.startswith("tflite") for p in recipe.passes):
        require_extra()  # a missing extra fails before any work


def check_onnx_ops(graphs: dict, recipe) -> None:
    """ValueError naming the first op of an ONNX graph (export_onnx's info) that the
    target does not run, with the layer it came from and the recipe that lists the ops.
    Only for targets that run ONNX: a TFLite target's accepted_ops name TFLite operators
    (its ONNX graphs are host-side references; edgetpu_check judges its TFLite graph)."""
    if recipe.runtime != "onnxruntime":
        return
    for info in graphs.values():
        for op in info["op_types"]:
            if op not in recipe.accepted_ops:
                layer = info.get("op_layers", {}).get(op)
                where = f"layer {layer}, {info['file']}" if layer else info["file"]
                raise ValueError(f"target {recipe.name} cannot run the ONNX op {op} ({where}); "
                                 f"{recipe.path} lists the ops it runs in accepted_ops")


def check_weight_bits(model, recipe) -> None:
    """ValueError (before any work) for int4 weights on a target whose runtime has no
    kernel for them. int8 weight-only layers export everywhere: TFLite graphs carry their
    rounded weights (float32, then the tflite_int8 pass's own int8)."""
    int4 = [name for name, bits in model.config.weight_bits.items() if bits == 4]
    if int4 and recipe.runtime != "onnxruntime":
        raise ValueError(f"target {recipe.name} runs {recipe.runtime}, which cannot execute "
                         f"the int4 weights of {int4[0]} (they need ONNX Runtime's "
                         f"com.microsoft:MatMulNBits); compress with --bits 8, or export for "
                         f"a target that runs onnxruntime")


def compiler_command(recipe) -> str | None:
    """The command, run in the bundle folder, that compiles its int8 TFLite file."""
    if recipe.compiler_command is None:
        return None
    return shlex.join(recipe.compiler_argv(TFLITE_INT8_FILE, runner_module().EDGETPU_DIR))


def representative_windows(quantization, calib, tokenizer, seq_len: int) -> list[list[int]]:
    """Calibration windows for a full-integer int8 pass: --calib if given, else the
    recipe's representative_dataset (a shipped split or a text file)."""
    dataset = quantization.representative_dataset
    text = calib or (default_corpus(dataset) if dataset in SPLITS else dataset)
    samples = quantization.representative_samples or 100
    windows = calibration_windows(tokenizer, text, samples * seq_len + 1, seq_len)
    return windows[:samples]


def _logits(model, windows) -> list[torch.Tensor]:
    """Per batch (the last window may be shorter than the rest)."""
    with torch.inference_mode():
        return [model(batch[:, :-1]) for batch in window_batches(windows, 8, "cpu")]


def _torch_pass(name: str, model, step: Callable, windows, profile: str, seq_len: int):
    """Run `step(model) -> (model, details)`; return the new model and the pass's row."""
    start = time.perf_counter()
    before, reference = measure(model, profile, seq_len), _logits(model, windows)
    model, details = step(model)
    change = max((new - old).abs().max().item()
                 for new, old in zip(_logits(model, windows), reference))
    return model, {"pass": name, "before": before, "after": measure(model, profile, seq_len),
                   "max_logit_change": change, "details": details,
                   "seconds": time.perf_counter() - start}


def export_run(checkpoint, out, options: ExportOptions = ExportOptions(), *,
               progress: Callable[[str], None] = lambda line: None) -> dict:
    """Export `checkpoint` to the bundle folder `out`; returns the report (also in the
    bundle's manifest under extra.export). ValueError (one line) for bad input, a pass the
    recipe asks for that this version lacks, or an artifact that fails validation."""
    recipe = load_recipe(options.target)
    _check_implemented(recipe)
    check_bundle_out(out, options.force)  # before any work
    run = load_run(checkpoint)
    model = run.model.eval()
    check_weight_bits(model, recipe)
    seq_len = model.config.context_length
    tokenizer = load_tokenizer(run.tokenizer_path)
    windows = calibration_windows(tokenizer, options.data or default_corpus("valid"),
                                  options.eval_tokens, seq_len, flag="--data")
    compared = windows[:COMPARED_WINDOWS]
    if has_simulation(model) and not options.distill:
        raise ValueError(f"{checkpoint}: the model is in its simulated form (circuits, DARUAN "
                         f"activations); pass --distill to fold it here, or run `qtf-edge "
                         f"distill` first")
    report = {"target": recipe.name, "recipe": str(recipe.path), "source": str(checkpoint),
              "out": str(out), "options": asdict(options), "passes": []}

    def deploy_form(m):
        if not has_simulation(m):
            return m, {"distilled": False}
        calib = calibration_windows(tokenizer, options.calib, options.calib_tokens, seq_len)
        deployed, fitted = distill_model(m, calib)
        return deployed.eval(), {"distilled": True, "activations": len(fitted),
                                 "max_fit_error": max((f.error.worst_max for f in fitted),
                                                      default=0.0)}

    lowerings = {}

    def lower_tt(m):
        measured = (recipe.name == "cpu" if options.measure_lowering is None
                    else options.measure_lowering)
        max_size_mb = (size_limit(checkpoint) if options.max_size_mb is None
                       else options.max_size_mb)
        max_bytes = None if max_size_mb is None else max_size_mb * 1e6
        # ONNX Runtime runs the chain's MatMuls; a TFLite target needs BATCH_MATMUL for it.
        chain_runs = recipe.runtime == "onnxruntime" or "BATCH_MATMUL" in recipe.accepted_ops
        for graph, tokens in (("prefill", seq_len), ("decode", 1)):  # decode's stays set
            lowerings[graph] = choose_lowering(m, recipe.profile, tokens=tokens,
                                               measure=measured, max_bytes=max_bytes,
                                               chain_runs=chain_runs)
        return m, {"layers": lowerings}

    torch_steps = {"deploy_form": deploy_form, "lower_tt": lower_tt}
    with tempfile.TemporaryDirectory(prefix="qtf-edge-export-") as tmp:
        stage, files, validation = Path(tmp), {}, {}
        for name in recipe.passes:
            if name == "bundle":  # last, by the recipe rules: written below
                continue
            progress(f"pass {name}")
            start = time.perf_counter()
            if name in torch_steps:
                model, row = _torch_pass(name, model, torch_steps[name], compared,
                                         recipe.profile, seq_len)
            elif name == "onnx":
                row = {"pass": name, "graphs": export_onnx(model, stage, opset=recipe.opset,
                                                           lowerings=lowerings or None)}
                check_onnx_ops(row["graphs"], recipe)
                files.update({"prefill.onnx": stage / "prefill.onnx",
                              "decode.onnx": stage / "decode.onnx"})
            elif name == "onnx_int8":
                row = {"pass": name, "graphs": {
                    graph: quantize_dynamic_int8(stage / f"{graph}.onnx",
                                                 stage / f"{graph}_int8.onnx")
                    for graph in ("prefill", "decode")}}
                check_onnx_ops(row["graphs"], recipe)
                files.update({f"{g}_int8.onnx": stage / f"{g}_int8.onnx"
                              for g in ("prefill", "decode")})
            elif name == "tflite":
                if lowerings:  # the window graph runs the context length, as prefill does
                    apply_lowering(model, lowerings["prefill"])
                row = {"pass": name, "model": export_tflite(model, stage / "model.tflite")}
                files["model.tflite"] = stage / "model.tflite"
            elif name == "tflite_int8":
                float_info = next(r["model"] for r in report["passes"] if r["pass"] == "tflite")
                quantization = recipe.quantization["tflite_int8"]
                paths = stage / "model.tflite", stage / TFLITE_INT8_FILE
                if quantization.mode == "full_integer":
                    info = quantize_tflite_full_integer(
                        *paths, float_info,
                        representative_windows(quantization, options.calib, tokenizer, seq_len),
                        ops=recipe.accepted_ops, float_output=quantization.float_output,
                        float_ops=module_outputs(paths[0], model, quantization.float_modules))
                else:
                    info = quantize_tflite_dynamic(*paths, float_info)
                row = {"pass": name, "model": info}
                files[TFLITE_INT8_FILE] = paths[1]
            elif name == "validate":
                validation = _validate(model, stage, files, windows, recipe, options)
                row = {"pass": name, "results": validation}
            elif name == "edgetpu_check":
                row = {"pass": name, "report": check_edgetpu(stage / TFLITE_INT8_FILE,
                                                             recipe, model)}
                row["report"]["compiler_command"] = compiler_command(recipe)
                progress(summary(row["report"]))
            else:
                raise AssertionError(f"unhandled pass {name}")  # _check_implemented's list
            row.setdefault("seconds", time.perf_counter() - start)
            report["passes"].append(row)
        files.update({"tokenizer.json": run.tokenizer_path,
                      "config.json": Path(checkpoint) / "config.json"})
        graphs = {Path(f).stem: {"file": f, **graph_io(path)} for f, path in files.items()
                  if f.endswith(".onnx")}
        graphs.update({Path(row["model"]["file"]).stem: row["model"]
                       for row in report["passes"] if row["pass"].startswith("tflite")})
        progress("pass bundle")
        # last: it sets the decode graph's lowerings on the model
        workload = workload_entry(model, seq_len, lowerings.get("decode"))
        write_bundle(out, files, {
            "target": recipe.name, "runtime": recipe.runtime, "graphs": graphs,
            "context_length": seq_len, "vocab_size": model.config.vocab_size,
            "source": str(checkpoint), "validation": validation, "recipe": recipe.name,
            "compiler_command": compiler_command(recipe),
            "generation": {"threads": recipe.threads}, WORKLOAD_KEY: workload,
            "extra": {REPORT_KEY: report}},
            force=options.force)
    return report


def _validate(model, stage: Path, files: dict, windows, recipe, options) -> dict:
    """Every artifact against torch; ValidationError (with the numbers) on a miss."""
    def graphs(suffix):
        return (stage / f"prefill{suffix}.onnx", stage / f"decode{suffix}.onnx")

    kwargs = {"threads": options.threads, "decode_windows": options.decode_windows,
              "decode_steps": options.decode_steps}
    results = {"float": validate_graphs(model, *graphs(""), windows, **kwargs)}
    check_thresholds(results["float"], "float",
                     top1=recipe.validation.float_top1_agreement)
    if "prefill_int8.onnx" in files:
        results["int8"] = validate_graphs(model, *graphs("_int8"), windows,
                                          reference=results["float"], **kwargs)
        check_thresholds(results["int8"], "int8",
                         perplexity_ratio=recipe.validation.int8_perplexity_ratio)
    if "model.tflite" in files:
        results["tflite"] = {"model": validate_tflite(model, stage / "model.tflite", windows,
                                                      threads=options.threads)}
        check_thresholds(results["tflite"], "float",
                         top1=recipe.validation.float_top1_agreement)
    if TFLITE_INT8_FILE in files:
        results["tflite_int8"] = {"model": validate_tflite(
            model, stage / TFLITE_INT8_FILE, windows, threads=options.threads,
            reference=results["tflite"]["model"])}
        check_thresholds(results["tflite_int8"], "int8",
                         perplexity_ratio=recipe.validation.int8_perplexity_ratio)
    return results
