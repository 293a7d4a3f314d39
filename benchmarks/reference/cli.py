"""The command line: the arguments, --plan's listing, and main, which runs the modes in
their order (or one row's --job)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from . import __doc__ as USAGE  # the package docstring: --help's description and epilog
from .data import data_paths
from .figures import fmt
from .job import EXIT_INTERRUPTED, run_job
from .measure import measure_mode
from .pack import pack_mode, unpack_mode
from .plan import (
    REPO,
    Layout,
    Row,
    build_plan,
    git_commit,
    plan_budgets,
    read_json,
    read_plan,
    select_rows,
    tokens_per_step,
    utc_now,
)
from .report import report_mode
from .scheduler import probe_mode, train_mode
from .tables import markdown_table

# ---------------------------------------------------------------------------- plan printing

def print_plan(plan: list[Row], layout: Layout) -> None:
    probe = {r["row"]: r for r in (read_json(layout.probe) or {}).get("rows", [])}
    lines = []
    for row in plan:
        projected = probe.get(row.name.rsplit("/", 1)[0] + "/seed0", {}).get("projected_s")
        lines.append([row.name, row.arch, row.train["steps"], row.train["batch_size"],
                      tokens_per_step(row) // row.train["batch_size"],
                      f"{row.train['steps'] * tokens_per_step(row) / 1e6:.1f}",
                      row.train.get("budget", "-"), "yes" if row.latency else "-",
                      fmt(projected and projected / 60, ".1f", "run --probe-steps")])
    print(markdown_table(["row", "arch", "steps", "batch", "context", "M tokens", "budget",
                          "CPU latency", "projected GPU min (probe)"], lines))


# ---------------------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=USAGE.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=USAGE.split("\n\n", 1)[1])
    modes = p.add_argument_group("modes")
    modes.add_argument("--plan", action="store_true", help="print the rows and budgets")
    modes.add_argument("--train", action="store_true", help="train the selected rows")
    modes.add_argument("--measure", action="store_true", help="export and time bundles (CPU)")
    modes.add_argument("--report", action="store_true", help="JSON, plots, REFERENCE.md")
    modes.add_argument("--quick", action="store_true",
                       help="tiny CPU smoke run; without other modes: train, measure, report")
    modes.add_argument("--pack", metavar="DIR", help="write result archives to DIR (after --train)")
    modes.add_argument("--unpack", nargs="+", metavar="FILE", help="extract result archives")
    p.add_argument("--rows", default="*", help="comma-separated glob patterns of row names, "
                                               "e.g. 'core/small/*,ablation/*/*/seed0'")
    p.add_argument("--runs-dir", default=None,
                   help="plan, runs and results (default runs/reference, runs/reference-quick)")
    p.add_argument("--data-dir", type=Path, default=None, help="WikiText-2 train.txt/valid.txt")
    p.add_argument("--steps", action="append", default=[], metavar="SIZE=N",
                   help="training steps of a size (repeatable)")
    p.add_argument("--batch", action="append", default=[], metavar="SIZE=N",
                   help="batch size of a size (repeatable)")
    p.add_argument("--jobs-per-gpu", type=int, default=None,
                   help="concurrent jobs per GPU, or on the CPU without GPUs (default 4 / 2)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="interrupt the jobs (checkpointed, resumable) after this many seconds")
    p.add_argument("--grace-s", type=float, default=60.0,
                   help="seconds an interrupted job gets to checkpoint before it is killed")
    p.add_argument("--mps", action="store_true", help="start CUDA MPS before the jobs")
    p.add_argument("--probe-steps", type=int, default=None,
                   help="with --train: time N steps of each architecture, project the plan")
    p.add_argument("--commit", default=None, help="the commit to record (default: git HEAD)")
    p.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"),
                   help="where --report writes reference_*.json and the plots (not --quick's)")
    p.add_argument("--reference-md", default=str(REPO / "benchmarks" / "REFERENCE.md"),
                   help="the REFERENCE.md whose generated blocks --report fills (not --quick's)")
    p.add_argument("--pack-max-mb", type=float, default=15.0)
    p.add_argument("--pack-max-files", type=int, default=6)
    p.add_argument("--bench-rounds", type=int, default=None,
                   help="interleaved timing rounds per bundle (default 3; 1 with --quick)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    # internal: one row's job (started by --train)
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--parent-command", default="", help=argparse.SUPPRESS)
    p.add_argument("--no-evaluate", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.runs_dir = args.runs_dir or str(REPO / "runs" / ("reference-quick" if args.quick
                                                          else "reference"))
    args.jobs_per_gpu = args.jobs_per_gpu or (4 if not args.quick else 2)
    args.bench_rounds = args.bench_rounds or (1 if args.quick else 3)
    if args.quick and not (args.plan or args.train or args.measure or args.report
                           or args.pack or args.unpack):
        args.train = args.measure = args.report = True
    if args.probe_steps is not None and not args.train:
        p.error("--probe-steps goes with --train")
    return args


def plan_meta(args, plan: list[Row]) -> dict:
    return {"command": shlex.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
            "commit": args.commit or git_commit(), "created_utc": utc_now(),
            "quick": args.quick, "data": data_paths(args),
            "vocab_size": plan[0].train["vocab_size"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    layout = Layout(Path(args.runs_dir))
    if args.job:
        try:
            return run_job(layout, args.job, args.device, args.parent_command,
                           not args.no_evaluate)
        except KeyboardInterrupt:  # SIGINT before training started: nothing to lose
            return EXIT_INTERRUPTED
    started = time.perf_counter()
    if args.unpack:
        unpack_mode(args.unpack, layout)
    status = 0
    if args.train or args.plan or not (args.measure or args.report or args.pack or args.unpack):
        plan = build_plan(args.quick, plan_budgets(args))
        if args.plan or not args.train:
            print_plan(plan, layout)
        if args.train and args.probe_steps:
            probe_mode(args, plan, plan_meta(args, plan))
        elif args.train:
            outcomes = train_mode(args, layout, plan, plan_meta(args, plan),
                                  select_rows(plan, args.rows))
            status = print_outcomes(outcomes, args.quiet)
    if args.pack or args.measure or args.report:
        plan, meta = read_plan(layout)
        meta["train_sha256"] = (read_json(layout.root / "tokenizer.meta.json") or {}).get(
            "train_sha256", "?")
        if args.pack:
            pack_mode(args, layout, plan)
        if args.measure:
            measure_mode(args, layout, select_rows(plan, args.rows), meta)
        if args.report:
            report_mode(args, layout, plan, meta)
    if not args.quiet:
        print(f"\nwall time {time.perf_counter() - started:.0f} s", flush=True)
    return status


def print_outcomes(outcomes: dict[str, str], quiet: bool) -> int:
    """Exit status of --train: 0 all done, 3 some resumable (interrupted, not started), 1 failed."""
    if not quiet and outcomes:
        counts = {o: sum(v == o for v in outcomes.values()) for o in sorted(set(outcomes.values()))}
        print("train: " + ", ".join(f"{n} {o}" for o, n in counts.items()), flush=True)
    if any(o in ("failed", "killed") for o in outcomes.values()):
        return 1
    return 3 if any(o != "done" for o in outcomes.values()) else 0
