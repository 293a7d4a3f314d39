"""`distill_run`: a simulated run folder in, a deploy-form run folder out, with a report.

Steps: read the checkpoint; cut calibration text into windows; record each DARUAN's
input range per channel on it; fit a B-spline per channel on the widened range; build the
deploy form (folded circuits, splines, Jacobi eigenvalues); compare it with the original
(perplexity on validation text, routing and rank decisions, logits); optionally heal it
with a short fine-tuning run on the calibration text; write the run and its report.
A model with nothing simulated (a dense baseline) or already in deploy form is copied.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from qtf_edge.data import load_tokenizer
from qtf_edge.derived import (
    DEFAULT_CALIBRATION_TOKENS,
    calibration_windows,
    heal,
    perplexity,
    validation_lines,
    write_derived_run,
)
from qtf_edge.distill.agreement import compare
from qtf_edge.distill.calibration import daruan_input_ranges
from qtf_edge.distill.deploy import (
    DEFAULT_MARGIN,
    deploy_model,
    fit_activations,
    has_simulation,
)
from qtf_edge.runs import check_new_run_dir, load_run

REPORT_FILE = "distill_report.json"
DEFAULT_EVAL_TOKENS = 32768  # validation tokens per perplexity; None: the whole text


@dataclass(frozen=True)
class DistillOptions:
    calib: str | None = None               # calibration text (default: shipped train excerpt)
    calib_tokens: int = DEFAULT_CALIBRATION_TOKENS
    data: str | None = None                # validation text (default: shipped valid excerpt)
    eval_tokens: int | None = DEFAULT_EVAL_TOKENS
    grid: int = 16
    order: int = 3
    margin: float = DEFAULT_MARGIN
    finetune_steps: int = 0
    # Gentle: the model arrives converged, at its schedule's floor (2e-4 to 3e-4 for the
    # presets); 3e-4 for 100 steps on the shipped excerpt cost a WikiText-2-trained small
    # model 4% word perplexity (benchmarks/RESULTS.md).
    finetune_lr: float = 5e-5
    seed: int = 0
    batch_size: int = 8
    device: str = "cpu"                    # where fine-tuning runs (auto, cpu, cuda)


@dataclass
class DistillReport:
    source: str
    out: str
    copied: str | None = None              # why the model was copied as it is, else None
    layers: list[dict] = field(default_factory=list)
    perplexity: dict = field(default_factory=dict)  # original / deploy / healed -> eval dict
    folding: dict | None = None
    end_to_end: dict | None = None
    logits: dict | None = None
    options: dict = field(default_factory=dict)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _layer_row(fitted) -> dict:
    low, high = fitted.observed
    spline_low, spline_high = fitted.spline.value_range()
    return {"layer": fitted.name, "channels": int(low.numel()),
            "observed_min": float(low.min()), "observed_max": float(high.max()),
            "fit_min": float(spline_low.min()), "fit_max": float(spline_high.max()),
            "max_abs_error": fitted.error.worst_max, "error_bound": fitted.error.worst_bound,
            "rms_error": fitted.error.overall_rms}


def distill_run(checkpoint: str | Path, out: str | Path, options: DistillOptions = DistillOptions(),
                *, overwrite: bool = False, quiet: bool = True,
                command: str = "distill") -> DistillReport:
    """Write the deploy form of `checkpoint` to `out` (see the module docstring)."""
    start = time.perf_counter()
    check_new_run_dir(out, overwrite)  # a taken --out fails before the work
    run = load_run(checkpoint)
    report = DistillReport(source=str(checkpoint), out=str(out), options=dict(options.__dict__))
    valid_lines = validation_lines(options.data)  # a bad --data fails before any work
    if run.form == "deploy" or not has_simulation(run.model):
        report.copied = ("already in deploy form" if run.form == "deploy" else
                         "no circuits or DARUAN activations to distill (a dense model)")
        write_derived_run(out, run.model, run, report.to_dict(), REPORT_FILE, command=command,
                          overwrite=overwrite, healed=False)
        return report

    tokenizer = load_tokenizer(run.tokenizer_path)
    windows = calibration_windows(tokenizer, options.calib, options.calib_tokens,
                                  run.config.context_length)
    deploy, fitted = distill_model(run.model, windows, options)
    report.layers = [_layer_row(f) for f in fitted]
    report.perplexity["original"] = _perplexity(run.model, tokenizer, valid_lines, options)
    report.perplexity["deploy"] = _perplexity(deploy, tokenizer, valid_lines, options)
    folding, end_to_end, logits = compare(run.model, deploy, windows, options.batch_size)
    report.folding, report.end_to_end = folding.to_dict(), end_to_end.to_dict()
    report.logits = logits.to_dict()

    if options.finetune_steps:
        deploy = heal(run, deploy, out, steps=options.finetune_steps,
                      learning_rate=options.finetune_lr, calib=options.calib, data=options.data,
                      seed=options.seed, overwrite=overwrite, quiet=quiet, command=command,
                      device=options.device)
        report.perplexity["healed"] = _perplexity(deploy, tokenizer, valid_lines, options)
    report.elapsed_s = time.perf_counter() - start
    write_derived_run(out, deploy, run, report.to_dict(), REPORT_FILE, command=command,
                      overwrite=overwrite, healed=bool(options.finetune_steps))
    return report


def distill_model(model, windows: list[list[int]], options: DistillOptions = DistillOptions()):
    """(deploy form, fitted activations) of a simulated model, calibrated on `windows`."""
    ranges = daruan_input_ranges(model, windows, options.batch_size)
    fitted = fit_activations(model, ranges, options.grid, options.order, options.margin)
    return deploy_model(model, fitted, options.grid, options.order), fitted


def _perplexity(model, tokenizer, lines, options: DistillOptions) -> dict:
    return perplexity(model, tokenizer, lines, batch_size=options.batch_size,
                      max_tokens=options.eval_tokens)
