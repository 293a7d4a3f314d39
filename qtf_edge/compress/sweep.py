"""`compress_sweep`: one compressed run per budget along a range, and their Pareto frontier.

    qtf-edge compress RUN --sweep params=200k:1M:5 --target rpi4 --out DIR

writes DIR/<key>=<value>/ (a run folder per feasible point, with its compress report),
DIR/sweep.json (every point: budget, figures, perplexity per word, or why it could not be
met) and DIR/sweep.png (perplexity against parameters, or shipped MB for a size_mb sweep, and
estimated energy, frontier highlighted), so a user can pick a point and export that run.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from qtf_edge.atomic import write_bytes_atomic, write_json_atomic
from qtf_edge.compress.run import CompressOptions, compress_run
from qtf_edge.pareto import SIZE_AXIS, non_dominated, plot_png
from qtf_edge.train.budget import KEYS, BudgetError, parse_budget

SWEEP_JSON, SWEEP_PNG = "sweep.json", "sweep.png"
OBJECTIVES = ("val_perplexity_per_word", "params", "size_mb", "latency_ms", "energy_uj")
_SPEC = re.compile(r"(\w+)=([^:]+):([^:]+):(\d+)")


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """'params=200k:1M:5' -> ('params', ['200000', ..., '1000000']): count budgets evenly
    spaced from low to high. ValueError naming --sweep otherwise."""
    match = _SPEC.fullmatch(str(text).strip())
    if not match:
        raise ValueError(f"--sweep {text}: expected KEY=LOW:HIGH:COUNT, e.g. params=200k:1M:5")
    key, low, high, count = match.groups()
    if key not in KEYS:
        raise ValueError(f"--sweep {text}: unknown key {key!r}; allowed keys: {', '.join(KEYS)}")
    low_value = getattr(parse_budget(f"{key}={low}", "--sweep"), key)
    high_value = getattr(parse_budget(f"{key}={high}", "--sweep"), key)
    if not (2 <= int(count) <= 50 and low_value < high_value):
        raise ValueError(f"--sweep {text}: expected LOW < HIGH and 2 <= COUNT <= 50")
    if any(v.endswith("x") for v in (low, high)) != all(v.endswith("x") for v in (low, high)):
        raise ValueError(f"--sweep {text}: LOW and HIGH must both be absolute or both relative")
    suffix = "x" if low.endswith("x") else ""
    return key, [f"{v:.6g}{suffix}" for v in np.linspace(low_value, high_value, int(count))]


def compress_sweep(checkpoint, out, sweep: str, options: CompressOptions, *,
                   overwrite: bool = False, quiet: bool = True,
                   command: str = "compress --sweep") -> dict:
    key, values = parse_sweep(sweep)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"--out {out}: already exists; pass --overwrite or choose another folder")
    points = []
    for value in values:
        folder = out / f"{key}={value}"
        point = {"budget": f"{key}={value}", "run": str(folder)}
        try:
            report = compress_run(checkpoint, folder, dataclasses.replace(
                options, budget=f"{key}={value}"), overwrite=overwrite, quiet=quiet,
                command=command)
        except BudgetError as error:
            points.append({**point, "run": None, "unmet": str(error)})
            continue
        perplexity = report["perplexity"].get("healed", report["perplexity"]["truncated"])
        points.append({**point, **report["after"], "val_perplexity_per_word": perplexity["per_word"]})
    met = [p for p in points if "unmet" not in p]
    if not met:  # nothing was written: every run folder is created only when whole
        raise BudgetError(f"--sweep {sweep}: no budget in the range can be met; "
                          f"{points[-1]['unmet']}")
    frontier = non_dominated(met, OBJECTIVES)
    doc = {"source": str(checkpoint), "sweep": sweep, "profile": options.target,
           "objectives": list(OBJECTIVES), "minimised": True,
           "label": "latency_ms and energy_uj are estimated per query by the cost model",
           "points": points, "frontier": frontier}
    write_json_atomic(out / SWEEP_JSON, doc)
    write_bytes_atomic(out / SWEEP_PNG, plot_png(
        met, frontier, f"{Path(checkpoint).name} compressed: perplexity vs cost (estimated on "
                       f"{options.target})", label_key="budget", points_label="compressed runs",
        size_axis=("size_mb", "MB of weights as shipped") if key == "size_mb" else SIZE_AXIS))
    return doc
