"""--train and --probe-steps: the row jobs as parallel subprocesses over the visible GPUs,
longest first, with a deadline and SIGINT (each job checkpoints and stops, resumable)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from qtf_edge.atomic import write_json_atomic
from qtf_edge.presets import PRESETS

from .data import fill_token_cache, shared_tokenizer
from .figures import fmt
from .job import EXIT_DONE, EXIT_INTERRUPTED, hardware
from .plan import (
    REPO,
    SCRIPT,
    Layout,
    Row,
    is_finished,
    select_rows,
    tokens_per_step,
    utc_now,
    write_plan,
)
from .tables import markdown_table

# ---------------------------------------------------------------------------- the scheduler

def visible_gpus() -> list[str]:
    """GPU ids the jobs may use: CUDA_VISIBLE_DEVICES if set, else every CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given:
        return [g.strip() for g in given.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def estimated_cost(row: Row) -> float:
    """Relative training time, only to start the longest jobs first: tokens x depth x
    width, x8 for the simulated parts (QTF trains 3-8 x slower per token, RESULTS.md)."""
    fields = {**PRESETS[row.size][0], **row.model}
    simulated = row.arch == "qtf" and fields.get("use_quantum_encoder", True)
    return (row.train["steps"] * tokens_per_step(row) * fields["n_layers"] * fields["d_model"]
            * (8 if simulated else 1))


@dataclass
class Job:
    row: Row
    process: subprocess.Popen
    gpu: str  # "" on the CPU
    started: float
    log: object
    interrupted: bool = False  # sent SIGINT: a non-zero exit then means "stopped early"


class Scheduler:
    """Runs row jobs as subprocesses, at most `per_gpu` on each GPU (or `per_gpu` on the
    CPU without GPUs), longest first, until all are done or the deadline passes."""

    def __init__(self, layout: Layout, gpus: list[str], per_gpu: int, deadline_s: float | None,
                 grace_s: float, command: str, evaluate: bool, quiet: bool):
        self.layout, self.gpus, self.per_gpu = layout, gpus, per_gpu
        self.deadline = None if deadline_s is None else time.monotonic() + deadline_s
        self.grace_s, self.command, self.evaluate, self.quiet = grace_s, command, evaluate, quiet
        self.running: list[Job] = []
        self.outcomes: dict[str, str] = {}
        self.stopping = False

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def free_gpu(self) -> str | None:
        """The GPU with the fewest jobs, if it has a free slot ("" for the CPU)."""
        slots = self.gpus or [""]
        load = {g: sum(job.gpu == g for job in self.running) for g in slots}
        gpu = min(slots, key=lambda g: load[g])
        return gpu if load[gpu] < self.per_gpu else None

    def launch(self, row: Row, gpu: str) -> None:
        # The cores shared out between the jobs that run at once (1 to 4 threads each).
        threads = max(1, min(4, (os.cpu_count() or 1) // (len(self.gpus or [""]) * self.per_gpu)))
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(threads)))
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        log_path = self.layout.log(row)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("a", encoding="utf-8")
        log.write(f"\n== {utc_now()} {self.command}\n")
        log.flush()
        argv = [sys.executable, str(SCRIPT), "--job", row.name,
                "--runs-dir", str(self.layout.root), "--device", "cuda" if self.gpus else "cpu",
                "--parent-command", self.command] + ([] if self.evaluate else ["--no-evaluate"])
        # A process group of its own: a Ctrl-C at the terminal reaches only this parent,
        # which forwards exactly one SIGINT (a second would kill a job before its
        # checkpoint). Not a session of its own: whatever ends this command's session (the
        # device tool's time limit) still ends the jobs.
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=REPO, **own_process_group())
        self.running.append(Job(row, process, gpu, time.monotonic(), log))
        self.say(f"start  {row.name}" + (f" on GPU {gpu}" if self.gpus else ""))

    def reap(self) -> None:
        for job in [j for j in self.running if j.process.poll() is not None]:
            self.running.remove(job)
            job.log.close()
            code = job.process.returncode
            outcome = {EXIT_DONE: "done", EXIT_INTERRUPTED: "interrupted"}.get(code, "failed")
            if outcome == "failed" and job.interrupted:
                outcome = "interrupted"  # stopped while starting up: nothing was lost
            self.outcomes[job.row.name] = outcome
            extra = "" if outcome != "failed" else f" (exit {code}; see {self.layout.log(job.row)})"
            self.say(f"{outcome:<6} {job.row.name} after {time.monotonic() - job.started:.0f} s"
                     f"{extra}")

    def stop_all(self) -> None:
        """SIGINT to every job (each checkpoints and exits), then SIGKILL after the grace
        period; a kill mid-checkpoint is rolled back when the row resumes."""
        self.stopping = True
        for job in self.running:
            job.process.send_signal(signal.SIGINT)
            job.interrupted = True
        why = "stop requested" if self.deadline is None or time.monotonic() < self.deadline \
            else "deadline"
        self.say(f"{why}: interrupted {len(self.running)} running job(s); waiting up to "
                 f"{self.grace_s:.0f} s for their checkpoints")
        limit = time.monotonic() + self.grace_s
        while self.running and time.monotonic() < limit:
            self.reap()
            time.sleep(0.5)
        for job in self.running:
            job.process.kill()
            job.process.wait()
            job.log.close()
            self.outcomes[job.row.name] = "killed"
            self.say(f"killed {job.row.name}: no checkpoint within the grace period")
        self.running.clear()

    def run(self, rows: list[Row]) -> dict[str, str]:
        queue = sorted(rows, key=estimated_cost, reverse=True)
        previous = signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        last_status = time.monotonic()
        try:
            while queue or self.running:
                self.reap()
                past = self.deadline is not None and time.monotonic() >= self.deadline
                if past or self.stopping:
                    self.stop_all()
                    break
                while queue and (gpu := self.free_gpu()) is not None:
                    self.launch(queue.pop(0), gpu)
                if time.monotonic() - last_status > 60:
                    self.say(f"{len(self.running)} running, {len(queue)} waiting, "
                             f"{sum(o == 'done' for o in self.outcomes.values())} done")
                    last_status = time.monotonic()
                time.sleep(0.5)
        finally:
            signal.signal(signal.SIGINT, previous)
        for row in queue:
            self.outcomes[row.name] = "not started"
        return self.outcomes


def own_process_group() -> dict:
    """Popen arguments that put the child in a new process group of this session."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}


def start_mps() -> None:
    """CUDA MPS lets the small kernels of several jobs on one GPU run concurrently (the
    issue 3 sweep ran 4-6 QTF jobs per H100 this way at nearly one job's tokens/s each).
    Started before anything here touches CUDA; one already running is kept."""
    try:
        done = subprocess.run(["nvidia-cuda-mps-control", "-d"], capture_output=True,
                              text=True, check=False)
        problem = done.stderr.strip() or done.stdout.strip() if done.returncode else None
    except OSError as error:
        problem = str(error)
    if problem:
        print(f"note: MPS not started ({problem}); jobs on one GPU share it by time-slicing",
              flush=True)


def train_mode(args, layout: Layout, plan: list[Row], meta: dict, selected: list[Row],
               evaluate: bool = True) -> dict[str, str]:
    """--train: the tokenizer and token cache once, then the selected unfinished rows."""
    layout.root.mkdir(parents=True, exist_ok=True)
    meta["tokenizer_sha256"] = shared_tokenizer(layout, meta["data"]["train"],
                                                plan[0].train["vocab_size"])
    write_plan(layout, plan, meta)
    fill_token_cache(layout, meta["data"])
    rows = [r for r in selected if not is_finished(layout, r)]
    if args.mps:
        start_mps()
    gpus = visible_gpus()
    if not args.quiet:
        print(f"training {len(rows)} row(s) on "
              + (f"GPU(s) {', '.join(gpus)}, {args.jobs_per_gpu} job(s) each" if gpus
                 else f"the CPU, {args.jobs_per_gpu} job(s) at once")
              + (f"; deadline {args.deadline_s:g} s" if args.deadline_s else ""), flush=True)
    scheduler = Scheduler(layout, gpus, args.jobs_per_gpu, args.deadline_s, args.grace_s,
                          meta["command"], evaluate, args.quiet)
    return scheduler.run(rows)


def probe_mode(args, plan: list[Row], meta: dict) -> None:
    """--probe-steps N: seed 0 of each selected architecture for N steps, concurrently as
    --train would run them; the tokens/s of the second half (past the warm-up) projects the
    planned steps. Writes RUNS/probe.json."""
    layout = Layout(Path(args.runs_dir) / "probe")
    chosen = {r.name for r in select_rows(plan, args.rows) if r.seed == 0}
    n = args.probe_steps
    probe_plan = [dataclasses.replace(r, train={**r.train, "steps": n, "eval_every": max(1, n // 2),
                                                "checkpoint_every": n, "eval_tokens": 4096,
                                                "warmup_steps": min(r.train["warmup_steps"], n)})
                  for r in plan if r.name in chosen]
    for row in probe_plan:  # always fresh: a probe measures, it does not resume
        shutil.rmtree(layout.train(row), ignore_errors=True)
        layout.result(row).unlink(missing_ok=True)
    train_mode(args, layout, probe_plan, dict(meta), probe_plan, evaluate=False)
    planned = {r.name: r for r in plan}
    report = []
    from qtf_edge.runs import read_metrics

    for row in probe_plan:
        records, _ = read_metrics(layout.train(row))
        rates = [r["tokens_per_s"] for r in records if r.get("event") == "eval"]
        rate = rates[-1] if rates else None
        full = planned[row.name]
        seconds = full.train["steps"] * tokens_per_step(full) / rate if rate else None
        report.append({"row": row.name, "tokens_per_s": rate, "planned_steps": full.train["steps"],
                       "projected_s": seconds})
    write_json_atomic(Path(args.runs_dir) / "probe.json",
                      {"probe_steps": n, "jobs_per_gpu": args.jobs_per_gpu,
                       "hardware": hardware("cuda"), "rows": report})
    print(markdown_table(["row", "tokens/s per job", "planned steps", "projected min"],
                         [[r["row"], fmt(r["tokens_per_s"], ",.0f"), r["planned_steps"],
                           fmt(r["projected_s"] and r["projected_s"] / 60, ".1f")]
                          for r in report]))
