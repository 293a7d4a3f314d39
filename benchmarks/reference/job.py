"""One row's job (the subprocess --train starts with --job): train or resume the row under
its lock, evaluate it, write its result; exit statuses the scheduler reads."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from qtf_edge.atomic import write_json_atomic

from .plan import ENERGY_PROFILES, QUICK_FINAL_EVAL_TOKENS, Layout, Row, read_plan, utc_now

# ---------------------------------------------------------------------------- one row (a job)

EXIT_DONE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 3


def hardware(device: str) -> str:
    import torch

    from qtf_edge.host import cpu_model

    if device == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"{cpu_model()} (torch {torch.__version__}, CPU)"


def checkpoint_step(folder: Path) -> int | None:
    """The step of the run folder's last complete checkpoint; None if it has none. A
    checkpoint cut short by a kill is rolled back to the previous one, the documented way
    out (qtf_edge.runs.save_checkpoint)."""
    from qtf_edge.runs import (
        PREVIOUS_SUFFIX,
        TRAIN_STATE_FILE,
        RunError,
        load_run,
        restore_previous_checkpoint,
    )
    from qtf_edge.train.state import read_train_state

    if not (folder / "lineage.json").is_file():
        return None
    try:
        load_run(folder)
    except RunError:
        if not any(p.name.endswith(PREVIOUS_SUFFIX) for p in folder.iterdir()):
            raise
        restored = restore_previous_checkpoint(folder)
        print(f"restored the previous checkpoint's {', '.join(restored)}", file=sys.stderr)
    return read_train_state(folder / TRAIN_STATE_FILE)[1].step


def train_row(row: Row, layout: Layout, plan_meta: dict, device: str, command: str) -> None:
    """Train a new run with the plan's tokenizer, or resume the row's run folder. Raises
    TrainingInterrupted (SIGINT, after a checkpoint) and BudgetError as train_run does."""
    from qtf_edge.train import train_run

    folder, data = layout.train(row), plan_meta["data"]
    step = checkpoint_step(folder)
    if step is None:
        train_run(folder, preset_name=row.size, arch=row.arch, data=data["train"],
                  valid=data["valid"], model_overrides=row.model,
                  train_overrides={**row.train, "device": device}, overwrite=True,
                  command=command, tokenizer_json=layout.tokenizer.read_bytes())
    elif step < row.train["steps"]:
        train_run(resume=folder, data=data["train"], valid=data["valid"],
                  train_overrides={"device": device}, command=command)


def mean_tokens_per_s(folder: Path) -> float | None:
    from qtf_edge.runs import read_metrics

    records, _ = read_metrics(folder)
    rates = [r["tokens_per_s"] for r in records if r.get("event") == "eval"
             and r.get("tokens_per_s")]
    return sum(rates) / len(rates) if rates else None


def budget_outcome(folder: Path) -> dict | None:
    """The last "budget" and "budget_round" events of a budgeted run's metrics."""
    from qtf_edge.runs import read_metrics

    records, _ = read_metrics(folder)
    final = [r for r in records if r.get("event") == "budget"]
    rounds = [r for r in records if r.get("event") == "budget_round"]
    if not final and not rounds:
        return None
    return {"final": final[-1] if final else None, "rounds": rounds}


def evaluate_row(row: Row, layout: Layout, plan_meta: dict, device: str) -> dict:
    """Word perplexity on the whole validation split, on the training device, and the run's
    description: parameters per part, TT ranks, estimated cost on each energy profile."""
    import torch

    from qtf_edge.data import load_tokenizer, read_corpus, tokenizer_sha256
    from qtf_edge.evaluate import evaluate_text
    from qtf_edge.run_info import describe_run
    from qtf_edge.runs import load_run
    from qtf_edge.train.state import read_train_state

    folder = layout.train(row)
    run = load_run(folder)
    state = read_train_state(folder / "train_state.safetensors")[1]
    use_cuda = device == "cuda" and torch.cuda.is_available()
    start = time.perf_counter()
    result = evaluate_text(run.model, load_tokenizer(run.tokenizer_path),
                           read_corpus(plan_meta["data"]["valid"]),
                           batch_size=32 if use_cuda else 8, device="cuda" if use_cuda else "cpu",
                           max_tokens=QUICK_FINAL_EVAL_TOKENS if plan_meta["quick"] else None)
    return {
        "evaluation": {**result.to_dict(), "split": plan_meta["data"]["valid"],
                       "device": "cuda" if use_cuda else "cpu",
                       "seconds": time.perf_counter() - start},
        "training": {"steps": state.step, "tokens_seen": state.tokens_seen,
                     "elapsed_s": state.elapsed_s, "batch_size": row.train["batch_size"],
                     "context_length": run.config.context_length,
                     "tokens_per_s": mean_tokens_per_s(folder),
                     "budget": budget_outcome(folder)},
        "description": describe_run(run, profiles=list(ENERGY_PROFILES)),
        "tokenizer_sha256": tokenizer_sha256(run.tokenizer_path),
    }


def write_result(layout: Layout, row: Row, status: str, **fields) -> None:
    sessions_file = layout.sessions(row)
    sessions = ([json.loads(line) for line in sessions_file.read_text().splitlines() if line]
                if sessions_file.is_file() else [])
    write_json_atomic(layout.result(row), {"row": dataclasses.asdict(row), "status": status,
                                           "finished_utc": utc_now(), "sessions": sessions,
                                           **fields})


def log_session(layout: Layout, row: Row, device: str, command: str, commit: str) -> None:
    path = layout.sessions(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"started_utc": utc_now(), "command": command, "commit": commit,
             "hardware": hardware(device), "device": device,
             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def run_job(layout: Layout, name: str, device: str, command: str, evaluate: bool) -> int:
    """The subprocess behind one row: train or resume it, then evaluate it. Exit status:
    EXIT_DONE, EXIT_INTERRUPTED (resumable) or EXIT_FAILED (the error is in the row's JSON)."""
    plan, meta = read_plan(layout)
    row = next((r for r in plan if r.name == name), None)
    if row is None:
        print(f"error: row {name!r} is not in {layout.plan}", file=sys.stderr)
        return EXIT_FAILED
    with row_lock(layout, row) as owner:
        if owner is not None:
            print(f"error: {name} is being trained by process {owner}; not starting a second "
                  f"job on its run folder", file=sys.stderr)
            return EXIT_FAILED
        log_session(layout, row, device, command, meta["commit"])
        return train_and_evaluate(layout, row, meta, device, command, evaluate)


@contextlib.contextmanager
def row_lock(layout: Layout, row: Row):
    """Yields None while this process holds the row's lock, or the pid of the live process
    that holds it (then nothing is locked)."""
    path = layout.root / "locks" / f"{row.folder}.pid"
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = take_lock(path)
    try:
        yield owner
    finally:
        if owner is None:
            path.unlink(missing_ok=True)


def take_lock(path: Path) -> int | None:
    """None once `path` holds this process's pid (linked into place, so it is never seen
    half-written), else the pid of the live process that holds it. A lock whose process
    is gone is taken over."""
    mine = path.with_name(f"{path.name}.{os.getpid()}")
    mine.write_text(str(os.getpid()))
    try:
        for _ in range(3):
            try:
                os.link(mine, path)
                return None
            except FileExistsError:
                holder = read_pid(path)
                if holder is not None and pid_alive(holder):
                    return holder
                path.unlink(missing_ok=True)  # stale: its process is gone
        return read_pid(path) or -1
    finally:
        mine.unlink(missing_ok=True)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def train_and_evaluate(layout: Layout, row: Row, meta: dict, device: str, command: str,
                       evaluate: bool) -> int:
    from qtf_edge.train import TrainingInterrupted
    from qtf_edge.train.budget import BudgetError

    name, budget_error = row.name, None
    try:
        train_row(row, layout, meta, device, f"{command}  [row {name}]")
    except (TrainingInterrupted, KeyboardInterrupt) as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BudgetError as error:
        if (checkpoint_step(layout.train(row)) or 0) < row.train["steps"]:
            write_result(layout, row, "infeasible", error=str(error))  # refused at the start
            return EXIT_DONE
        budget_error = str(error)  # trained to the end, over budget: still measured
    except Exception as error:  # recorded in the row's JSON, then the traceback in its log
        write_result(layout, row, "failed", error=f"{type(error).__name__}: {error}")
        raise
    if not evaluate:
        return EXIT_DONE
    try:
        figures = evaluate_row(row, layout, meta, device)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # trained: the next --train only evaluates it
    write_result(layout, row, "done", budget_error=budget_error, **figures)
    return EXIT_DONE
