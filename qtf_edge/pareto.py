"""The Pareto frontier of a run's evaluations: perplexity against size, latency, energy.

Each "eval" record of metrics.jsonl is a point: (step, validation perplexity per word,
parameters, estimated latency_ms and energy_uj per query on the run's --target). A point
is on the frontier when no other point is at least as good in all four (lower is better)
and strictly better in one. Latency and energy are the cost model's ESTIMATES.

A run folder keeps only its latest checkpoint, so of the frontier only the final step's
weights exist; `pick` reports the best point under a constraint and whether it is that
one, never pretending an earlier step can be exported.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from qtf_edge.atomic import write_bytes_atomic, write_json_atomic
from qtf_edge.report.plots import figure_png, new_figure
from qtf_edge.runs import RunError, read_metrics
from qtf_edge.train.budget import KEYS, Budget

OBJECTIVES = ("val_perplexity_per_word", "params", "latency_ms", "energy_uj")
JSON_FILE, PNG_FILE = "pareto.json", "pareto.png"


def eval_points(records: list[dict]) -> list[dict]:
    """One point per evaluated step (the last record wins, e.g. after a resume), in step
    order; evaluations with a non-finite perplexity are left out."""
    by_step = {}
    for r in records:
        if r.get("event") != "eval":
            continue
        estimated = r.get("estimated") or {}
        point = {"step": r.get("step"), "val_perplexity_per_word": r.get("val_perplexity_per_word"),
                 "params": r.get("params"), "latency_ms": estimated.get("latency_ms_per_query"),
                 "energy_uj": estimated.get("energy_uj_per_query")}
        if all(isinstance(point[k], (int, float)) and math.isfinite(point[k])
               for k in ("step", *OBJECTIVES)):
            by_step[point["step"]] = point
    return [by_step[s] for s in sorted(by_step)]


def dominates(a: dict, b: dict, keys=OBJECTIVES) -> bool:
    """a is no worse than b in every key and better in at least one (lower is better)."""
    return all(a[k] <= b[k] for k in keys) and any(a[k] < b[k] for k in keys)


def non_dominated(points: list[dict], keys=OBJECTIVES) -> list[dict]:
    """The points no other point dominates, in their input order."""
    return [p for p in points if not any(dominates(q, p, keys) for q in points if q is not p)]


def pick(points: list[dict], budget: Budget) -> dict | None:
    """The lowest-perplexity point meeting every limit of `budget` (None if none does);
    ties go to the later step."""
    ok = [p for p in points if all(p[k] <= v for k, v in budget.limits().items())]
    return min(ok, key=lambda p: (p["val_perplexity_per_word"], -p["step"]), default=None)


def frontier_of_run(run_dir: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """(every evaluated point, the frontier) of a run folder; RunError if it has none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: not found; expected a run folder written by qtf-edge train")
    records, _ = read_metrics(run_dir)
    points = eval_points(records)
    if not points:
        raise RunError(f"{run_dir / 'metrics.jsonl'}: no evaluations with a finite perplexity; "
                       f"expected the eval records qtf-edge train writes")
    return points, non_dominated(points)


SIZE_AXIS = ("params", "parameters")


def plot_png(points: list[dict], frontier: list[dict], title: str, label_key: str = "step",
             points_label: str = "evaluations", size_axis: tuple[str, str] = SIZE_AXIS
             ) -> bytes:
    """Perplexity per word against size (parameters, or size_axis's key and label) and
    against estimated energy, frontier highlighted, each frontier point annotated with its
    label_key; PNG bytes (matplotlib's Agg backend, no display needed)."""
    figure = new_figure(10, 4)
    for axes, key, label in ((figure.add_subplot(1, 2, 1), *size_axis),
                             (figure.add_subplot(1, 2, 2), "energy_uj",
                              "energy per query, uJ (estimated)")):
        axes.scatter([p[key] for p in points], [p["val_perplexity_per_word"] for p in points],
                     c="0.7", label=points_label)
        line = sorted(frontier, key=lambda p: p[key])
        axes.plot([p[key] for p in line], [p["val_perplexity_per_word"] for p in line], "o-",
                  c="C0", label="Pareto frontier")
        for p in frontier:
            axes.annotate(str(p[label_key]), (p[key], p["val_perplexity_per_word"]), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
        axes.set_xlabel(label)
        axes.set_ylabel("validation perplexity per word")
        axes.set_yscale("log")  # compressed and early points reach many times the best
        axes.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    return figure_png(figure)


def write_frontier(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
    """Write pareto.json and pareto.png (atomically) into `out` (default: the run folder);
    returns the JSON document."""
    run_dir = Path(run_dir)
    points, frontier = frontier_of_run(run_dir)
    out = Path(out) if out is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    doc = {"run": str(run_dir), "objectives": list(OBJECTIVES), "minimised": True,
           "label": "latency_ms and energy_uj are estimated per query by the cost model",
           "points": points, "frontier": frontier, "final_step": points[-1]["step"]}
    write_json_atomic(out / JSON_FILE, doc)
    write_bytes_atomic(out / PNG_FILE, plot_png(points, frontier, f"{run_dir.name}: "
                                                f"perplexity vs cost (estimated)"))
    return doc


__all__ = ["KEYS", "OBJECTIVES", "dominates", "eval_points", "frontier_of_run",
           "non_dominated", "pick", "plot_png", "write_frontier"]
