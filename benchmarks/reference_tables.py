"""Reproduce the reference model card's tables on WikiText-2 (issue 9), with the commands.

The reference Q-TensorFormer v4 model card claims parameter counts, perplexity, energy per
query, quantum path usage, an ablation and a scale-up table, and concedes +104% CPU latency
against dense. This script trains every row of one fixed plan on the same data, with one
tokenizer (byte-level BPE of 8192 tokens, trained once on the training split and given to
every run) and the same seeds, and measures each finished run:

    word perplexity      the whole validation split (qtf_edge.evaluate.evaluate_text), on the
                         device that trained the run
    parameters, MB       counted; MB = float32 weights (4 bytes a parameter)
    energy per query     ESTIMATED by the cost model (qtf_edge.run_info.describe_run) on the
                         cpu_xeon and edge_mobile profiles; nothing here measures power
    quantum path usage   the share of validation tokens the router sends to QKSAM
    CPU decode latency   MEASURED on this machine: the exported ONNX bundle (the distilled
                         deploy form for QTF) through its own run.py --bench, one thread

Rows (`build_plan`): core (dense vs QTF at small and large), ablation (cumulative switches
from dense to the full QTF, then an energy budget), scale (medium and xl; small and large
are the core rows), baseline (dense models shrunk by width to each QTF's parameter count).
Small rows run seeds 0, 1, 2; the others seed 0.

Modes (any combination; they run in this order):
    --plan           print the rows and their training budgets (the default)
    --unpack FILE..  extract --pack archives into --runs-dir
    --train          train the rows matching --rows as parallel subprocesses spread over the
                     visible GPUs (--jobs-per-gpu on each); finished rows are skipped, others
                     resume from their last checkpoint; at --deadline-s the jobs are sent
                     SIGINT, checkpoint and stop, and a later --train resumes them
    --probe-steps N  with --train: N steps of each selected architecture (seed 0) in
                     RUNS/probe, then tokens/s and the projected time of the planned steps
    --pack DIR       the finished rows (JSON, log tails, weights that fit) as .tar.gz files
                     within the device tool's limits on what comes back from $OUT
    --measure        export and time the bundles on this CPU (needs onnx and onnxruntime)
    --report         benchmarks/results/reference_*.json, the PNG plots and the generated
                     blocks of benchmarks/REFERENCE.md; prints every table
    --quick          a CPU smoke run of train + measure + report: tiny models, a few steps,
                     the shipped WikiText-2 excerpt; results go to runs/reference-quick only

On the GPU machine (WikiText-2 carried as .bench-data/wikitext-2; onnx is not needed there):
    python3 benchmarks/reference_tables.py --train --mps --jobs-per-gpu 4 --deadline-s 480 \\
        --commit SHA --pack $OUT
Then here:
    python benchmarks/reference_tables.py --unpack FILES --measure --report
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The repository root goes on the path: the GPU machine has no installed package.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from qtf_edge.atomic import write_json_atomic, write_text_atomic
from qtf_edge.config import DENSE_SWITCHES, ModelConfig
from qtf_edge.presets import PRESETS, preset

# ---------------------------------------------------------------------------- the card

# The figures under test: the reference Q-TensorFormer v4 model card as quoted in issue 9.
# They are claims, not results of this project; nothing else in this file is a number to
# report. The card gives no per-row numbers for its ablation or for medium/xl.
CARD = {
    "source": "reference Q-TensorFormer v4 model card, as quoted in issue 9",
    "params": {"small": {"dense": 1.55e6, "qtf": 0.79e6},     # d=128
               "large": {"dense": 10.76e6, "qtf": 1.33e6}},   # d=512
    "perplexity": {"dense": 65.0, "qtf_low": 68.0, "qtf_high": 72.0},
    "energy_uj": {"cpu_xeon": {"dense": 120.0, "qtf": 60.0},      # the card's "CPU"
                  "edge_mobile": {"dense": 350.0, "qtf": 95.0}},  # the card's "mobile"
    "quantum_path_usage": 0.20,
    "cpu_latency_ratio": 2.04,  # "+104% CPU latency against dense"
    "scale": {"small": (128, 3), "medium": (256, 4), "large": (512, 6), "xl": (768, 12)},
}
# When a measured figure counts as reproducing a claim (see REFERENCE.md, "Verdicts").
COMPRESSION_TOLERANCE = 0.9      # our dense/QTF parameter ratio >= 0.9 x the card's
ENERGY_TOLERANCE = 1.1           # our QTF/dense energy ratio <= 1.1 x the card's
QUANTUM_USAGE_TOLERANCE = 0.03   # |routed share - 0.20| <= 0.03
LATENCY_BAND = (0.8, 1.25)       # our QTF/dense decode ratio within this x the card's 2.04

# ---------------------------------------------------------------------------- the plan

SIZES = ("small", "medium", "large", "xl")
SMALL_SEEDS = (0, 1, 2)
VOCAB_SIZE = 8192          # one tokenizer for every row, whatever the preset's vocabulary
QUICK_VOCAB_SIZE = 1024
ENERGY_PROFILES = ("cpu_xeon", "edge_mobile")
BUDGET_PROFILE = "cpu_xeon"
EVAL_TOKENS_CAP = 65_536   # validation tokens of each in-training evaluation
# run.py --bench settings: prompt words (the first of valid.txt's first long line), new
# tokens per generation, generations per round; --quick's are smaller (context 32).
BENCH = {"prompt_words": 48, "new_tokens": 32, "runs": 10}
QUICK_BENCH = {"prompt_words": 8, "new_tokens": 8, "runs": 3}

# Training budget per size: (steps, batch size); the context is the preset's. small is
# issue 3's recipe (4000 x 32 x 128 = 16.4 M tokens); medium and large get the same
# tokens at their context of 256; xl half of them (GPU time). Override with --steps/--batch.
FULL_BUDGETS = {"small": (4000, 32), "medium": (2000, 32), "large": (2000, 32),
                "xl": (1000, 16)}
# --quick: models the size of `tiny`, widths still growing with the size name, so that
# every table fills in minutes on two CPU cores. Only the pipeline is tested by them.
QUICK_MODELS = {
    "small": {"context_length": 32, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 128},
    "medium": {"context_length": 32, "d_model": 48, "n_layers": 1, "n_heads": 2, "d_ff": 192},
    "large": {"context_length": 32, "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 256},
    "xl": {"context_length": 32, "d_model": 96, "n_layers": 2, "n_heads": 4, "d_ff": 384},
}
QUICK_TT = {"tt_rank": 4, "tt_embedding_rank": 16, "r_min": 2, "r_max": 4}
QUICK_BUDGETS = {"small": (60, 8), "medium": (40, 8), "large": (30, 8), "xl": (20, 8)}
QUICK_EVAL_TOKENS = 4096     # per in-training evaluation
QUICK_FINAL_EVAL_TOKENS = 16_384  # the final one: the first tokens of the valid excerpt

# The ablation, cumulative as in the card: each row adds its switches to the row above.
# adaptive rank needs the quantum encoder (ranks follow its entanglement entropy), so they
# come together; QKSAM without the router sends every token to QKSAM. The card's last row,
# "DARUAN + energy budget", is split: + DARUAN (the full QTF, the core row) and + the budget.
ABLATION = (
    ("tt", "+ TT compression", {"use_tt": True, "tt_embeddings": True}),
    ("adaptive-rank", "+ adaptive rank (with the quantum encoder)",
     {"use_quantum_encoder": True, "adaptive_rank": True}),
    ("qksam", "+ QKSAM (every token)", {"use_qksam": True}),
    ("routing", "+ selective routing", {"use_router": True}),
    ("daruan", "+ DARUAN (the full QTF)", {"use_qkan": True}),
    ("energy-budget", "+ energy budget", {}),
)


@dataclass(frozen=True)
class Row:
    """One training run of the plan."""
    name: str      # group/size/variant/seedN
    group: str     # core, ablation, scale, baseline
    size: str      # a preset name
    variant: str   # dense, qtf, an ablation step, dense-w<d>
    seed: int
    arch: str      # "qtf" or "dense" (train_run's arch)
    label: str
    model: dict    # ModelConfig overrides on top of the preset
    train: dict    # TrainConfig overrides: the budget, schedule, seed, vocabulary
    latency: bool  # exported and timed on the CPU (seed 0 of each architecture)

    @property
    def folder(self) -> str:
        return self.name.replace("/", ".")


def size_model(size: str, quick: bool) -> dict:
    """ModelConfig fields of a size: the preset's, or --quick's tiny stand-in."""
    fields, _ = preset(size)
    return {**fields, **QUICK_MODELS[size], **QUICK_TT} if quick else fields


def train_settings(size: str, steps: int, batch: int, seed: int, quick: bool) -> dict:
    """TrainConfig overrides: the plan's budget, and a schedule scaled to it (warm-up at most
    a tenth of the steps, four evaluations (two with --quick), eight checkpoints)."""
    _, fields = preset(size)
    return {"steps": steps, "batch_size": batch, "seed": seed,
            "vocab_size": QUICK_VOCAB_SIZE if quick else VOCAB_SIZE,
            "learning_rate": fields["learning_rate"], "min_lr": fields["min_lr"],
            "warmup_steps": min(fields["warmup_steps"], max(1, steps // 10)),
            "eval_every": max(1, steps // (2 if quick else 4)),
            "checkpoint_every": max(1, steps // 8),
            "eval_tokens": QUICK_EVAL_TOKENS if quick else min(fields["eval_tokens"],
                                                                EVAL_TOKENS_CAP),
            "target": BUDGET_PROFILE}


def build_model(fields: dict, vocab: int, dense: bool = False):
    from qtf_edge.model import QTensorFormer

    switches = DENSE_SWITCHES if dense else {}
    return QTensorFormer(ModelConfig(**{**fields, "vocab_size": vocab, **switches}))


def param_count(fields: dict, vocab: int, dense: bool = False) -> int:
    from qtf_edge.cost.counts import count_params

    return count_params(build_model(fields, vocab, dense))


def matched_width(target: int, fields: dict, vocab: int) -> int:
    """The d_model (a multiple of n_heads, d_ff = 4 d, same depth) whose dense model's
    parameter count is closest to target. Parameters grow with d: a binary search."""
    widths = list(range(fields["n_heads"], fields["d_model"] + 1, fields["n_heads"]))

    def params(d: int) -> int:
        return param_count({**fields, "d_model": d, "d_ff": 4 * d}, vocab, dense=True)

    low, high = 0, len(widths) - 1
    while low < high:
        mid = (low + high) // 2
        if params(widths[mid]) < target:
            low = mid + 1
        else:
            high = mid
    nearby = widths[max(0, low - 1):low + 1]
    return min(nearby, key=lambda d: abs(params(d) - target))


def card_energy_budget(fields: dict, vocab: int) -> float:
    """The card's 60 uJ CPU budget, as what it is there: half its dense model's 120 uJ. An
    absolute 60 uJ per query is far below anything our cost model gives (see REFERENCE.md),
    so the limit is the card's ratio times the estimated energy per query (a forward over
    the context) of the dense model of the same size, on cpu_xeon."""
    from qtf_edge.train.budget import measure

    ratio = CARD["energy_uj"]["cpu_xeon"]["qtf"] / CARD["energy_uj"]["cpu_xeon"]["dense"]
    dense = build_model(fields, vocab, dense=True)
    return ratio * measure(dense, BUDGET_PROFILE, fields["context_length"])["energy_uj"]


def build_plan(quick: bool, budgets: dict[str, tuple[int, int]]) -> list[Row]:
    """Every row, in the order the tables read them (deterministic: built from the presets)."""
    vocab = QUICK_VOCAB_SIZE if quick else VOCAB_SIZE
    rows: list[Row] = []

    def add(group, size, variant, seed, arch, label, model=None, budget=None):
        steps, batch = budgets[size]
        train = train_settings(size, steps, batch, seed, quick)
        if budget is not None:
            train["budget"] = f"energy_uj={budget:.6g}"
        overrides = {**(QUICK_MODELS[size] | QUICK_TT if quick else {}), **(model or {})}
        rows.append(Row(f"{group}/{size}/{variant}/seed{seed}", group, size, variant, seed,
                        arch, label, overrides, train, latency=seed == 0))

    for size, seeds in (("small", SMALL_SEEDS), ("large", (0,))):
        for seed in seeds:
            add("core", size, "dense", seed, "dense", "dense")
            add("core", size, "qtf", seed, "qtf", "QTF")
    switches = dict(DENSE_SWITCHES)
    for variant, label, extra in ABLATION:
        switches.update(extra)
        if variant == "daruan":
            continue  # the full QTF: the core/small/qtf rows
        budget = (card_energy_budget(size_model("small", quick), vocab)
                  if variant == "energy-budget" else None)
        for seed in SMALL_SEEDS:
            add("ablation", "small", variant, seed, "qtf", label, dict(switches), budget)
    for size in ("medium", "xl"):
        add("scale", size, "dense", 0, "dense", "dense")
        add("scale", size, "qtf", 0, "qtf", "QTF")
    for size in SIZES:
        fields = size_model(size, quick)
        width = matched_width(param_count(fields, vocab), fields, vocab)
        for seed in SMALL_SEEDS if size == "small" else (0,):
            add("baseline", size, f"dense-w{width}", seed, "dense",
                f"dense, d={width} (QTF's parameters)", {"d_model": width, "d_ff": 4 * width})
    return rows


def parse_size_values(pairs: list[str], flag: str) -> dict[str, int]:
    """SIZE=N pairs (--steps small=2000) -> {size: N}."""
    values = {}
    for pair in pairs:
        size, sep, value = pair.partition("=")
        if not sep or size not in SIZES or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"error: {flag} {pair!r}: expected SIZE=N with SIZE one of "
                             f"{', '.join(SIZES)} and N >= 1")
        values[size] = int(value)
    return values


def plan_budgets(args) -> dict[str, tuple[int, int]]:
    base = QUICK_BUDGETS if args.quick else FULL_BUDGETS
    steps = parse_size_values(args.steps, "--steps")
    batch = parse_size_values(args.batch, "--batch")
    return {size: (steps.get(size, s), batch.get(size, b)) for size, (s, b) in base.items()}


def select_rows(plan: list[Row], patterns: str) -> list[Row]:
    """Rows whose name matches any of the comma-separated glob patterns."""
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [r for r in plan if any(fnmatch.fnmatchcase(r.name, p) for p in wanted)]
    if not chosen:
        raise SystemExit(f"error: --rows {patterns!r} matches no row; see --plan")
    return chosen


def tokens_per_step(row: Row) -> int:
    context = row.model.get("context_length", PRESETS[row.size][0]["context_length"])
    return row.train["batch_size"] * context


# ---------------------------------------------------------------------------- the runs folder

@dataclass(frozen=True)
class Layout:
    """Where everything of one plan lives (--runs-dir)."""
    root: Path

    plan = property(lambda self: self.root / "plan.json")
    tokenizer = property(lambda self: self.root / "tokenizer.json")
    probe = property(lambda self: self.root / "probe.json")
    packed = property(lambda self: self.root / "packed.json")

    def train(self, row: Row) -> Path:      # the run folder (resumable checkpoints)
        return self.root / "train" / row.folder

    def result(self, row: Row) -> Path:     # written when the row is finished
        return self.root / "rows" / f"{row.folder}.json"

    def sessions(self, row: Row) -> Path:   # one line per job that worked on the row
        return self.root / "sessions" / f"{row.folder}.jsonl"

    def log(self, row: Row) -> Path:
        return self.root / "logs" / f"{row.folder}.log"

    def weights(self, row: Row) -> Path:    # weights-only run folder from a pack
        return self.root / "weights" / row.folder

    def untrained(self, row: Row) -> Path:  # same-shape stand-in where weights are absent
        return self.root / "untrained" / row.folder

    def bundle(self, row: Row) -> Path:
        return self.root / "bundles" / row.folder

    def latency(self, row: Row) -> Path:
        return self.root / "latency" / f"{row.folder}.json"


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def row_from_dict(values: dict) -> Row:
    return Row(**values)


def write_plan(layout: Layout, plan: list[Row], meta: dict) -> None:
    write_json_atomic(layout.plan, {**meta, "rows": [dataclasses.asdict(r) for r in plan]})


def read_plan(layout: Layout) -> tuple[list[Row], dict]:
    doc = read_json(layout.plan)
    if doc is None:
        raise SystemExit(f"error: {layout.plan}: no plan here; run --train (or --unpack) "
                         f"with this --runs-dir first")
    return [row_from_dict(r) for r in doc.pop("rows")], doc


def is_finished(layout: Layout, row: Row) -> bool:
    result = read_json(layout.result(row))
    return result is not None and result.get("status") in ("done", "infeasible")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_commit() -> str:
    """HEAD, with +dirty when the tree has changes; 'unknown' without git (pass --commit)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git here; pass --commit)"
    return head + ("+dirty" if dirty else "")


# ---------------------------------------------------------------------------- data and tokenizer

def data_paths(args) -> dict[str, str]:
    """WikiText-2 train and valid: --data-dir, else .bench-data/wikitext-2 (how the GPU
    machine gets it), else ../shared/data/wikitext-2; --quick: the shipped excerpt."""
    from qtf_edge.data import default_corpus

    if args.quick and args.data_dir is None:
        return {"train": str(default_corpus("train")), "valid": str(default_corpus("valid"))}
    candidates = ([args.data_dir] if args.data_dir else
                  [REPO / ".bench-data" / "wikitext-2", REPO.parent / "shared/data/wikitext-2"])
    for folder in candidates:
        if (folder / "train.txt").is_file() and (folder / "valid.txt").is_file():
            return {"train": str(folder / "train.txt"), "valid": str(folder / "valid.txt")}
    raise SystemExit(f"error: no WikiText-2 train.txt/valid.txt in "
                     f"{', '.join(map(str, candidates))}; pass --data-dir")


def shared_tokenizer(layout: Layout, train_text: str, vocab: int) -> str:
    """Train the one tokenizer of the plan (deterministic: the same text gives the same
    file), or check the one already there; returns its sha256."""
    from qtf_edge.data import corpus_sha256, read_corpus, train_tokenizer

    lines = read_corpus(train_text)
    meta_path = layout.root / "tokenizer.meta.json"
    meta = {"vocab_size": vocab, "train_sha256": corpus_sha256(lines)}
    if layout.tokenizer.is_file():
        if read_json(meta_path) != meta:
            raise SystemExit(f"error: {layout.tokenizer} was trained on other text or for "
                             f"another vocabulary than {meta}; use another --runs-dir")
    else:
        tokenizer = train_tokenizer(lines, vocab)
        # The bytes prepare_session hashes and saves, so the token cache is shared.
        text = tokenizer.to_str(pretty=True)
        layout.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(layout.tokenizer, text)
        write_json_atomic(meta_path, meta)
    return hashlib.sha256(layout.tokenizer.read_bytes()).hexdigest()


def fill_token_cache(layout: Layout, data: dict[str, str]) -> None:
    """Encode both splits once, before the jobs start, so that they all read the cache
    instead of encoding the same text at the same time."""
    from qtf_edge.data import encode_corpus, load_tokenizer, read_corpus

    tokenizer = load_tokenizer(layout.tokenizer)
    digest = hashlib.sha256(layout.tokenizer.read_bytes()).hexdigest()
    for path in data.values():
        encode_corpus(read_corpus(path), tokenizer, digest)


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
    from qtf_edge.train.loop import run_session
    from qtf_edge.train.setup import prepare_session

    folder, data = layout.train(row), plan_meta["data"]
    step = checkpoint_step(folder)
    if step is None:
        # prepare_session takes an existing tokenizer (train_run does not pass one through
        # for a single process); run_session is train_run's loop.
        session = prepare_session(
            out=folder, preset_name=row.size, arch=row.arch, data=data["train"],
            valid=data["valid"], model_overrides=row.model,
            train_overrides={**row.train, "device": device}, overwrite=True,
            command=command, tokenizer_json=layout.tokenizer.read_bytes())
        run_session(session, quiet=False)
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
        argv = [sys.executable, str(Path(__file__).resolve()), "--job", row.name,
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


# ---------------------------------------------------------------------------- pack / unpack

def weights_only_run(folder: Path, dest: Path, row: Row) -> Path:
    """A run folder without the optimizer state (a third of the bytes), as qtf_edge reads it."""
    from qtf_edge.runs import load_run, save_run

    run = load_run(folder)
    return save_run(dest, run.model, run.tokenizer_path, command=f"weights of {row.name}",
                    parent=folder, overwrite=True)


def tail(path: Path, lines: int = 200) -> bytes:
    return b"\n".join(path.read_bytes().splitlines()[-lines:]) + b"\n" if path.is_file() else b""


def pack_mode(args, layout: Layout, plan: list[Row]) -> None:
    """Archives of at most --pack-max-mb each (at most --pack-max-files): the first with
    the plan, the tokenizer, every row's JSON, sessions and log tail; then the weights of the
    finished latency rows not packed before, largest last, while they fit. What did not fit
    is listed in pack.json; --measure times those rows on same-shape untrained weights."""
    out = Path(args.pack)
    out.mkdir(parents=True, exist_ok=True)
    limit = args.pack_max_mb * 2**20
    packed = set(read_json(layout.packed) or [])
    small = [layout.plan, layout.tokenizer, layout.root / "tokenizer.meta.json", layout.probe]
    for row in plan:
        small += [p for p in (layout.result(row), layout.sessions(row)) if p.is_file()]
    with tempfile.TemporaryDirectory() as tmp:
        staged = []
        for row in plan:
            if row.latency and is_finished(layout, row) and row.name not in packed \
                    and (layout.train(row) / "model.safetensors").is_file():
                dest = weights_only_run(layout.train(row), Path(tmp) / row.folder, row)
                size = sum(f.stat().st_size for f in dest.iterdir())
                staged.append((size, row, dest))
        archives, left_out = [[]], []
        budget = [limit - sum(p.stat().st_size for p in small if p.is_file()) - 2**20]
        for size, row, dest in sorted(staged, key=lambda s: s[0]):
            if size > budget[-1]:
                if len(archives) >= args.pack_max_files or size > limit - 2**20:
                    left_out.append(row.name)
                    continue
                archives.append([])
                budget.append(limit - 2**20)
            archives[-1].append((row, dest))
            budget[-1] -= size
        for index, members in enumerate(archives, start=1):
            path = out / f"reference-pack-{index}.tar.gz"
            with tarfile.open(path, "w:gz") as tar:
                if index == 1:
                    for file in small:
                        if file.is_file():
                            tar.add(file, arcname=str(file.relative_to(layout.root)))
                    for row in plan:
                        log = tail(layout.log(row))
                        if log.strip():
                            add_bytes(tar, f"logs/{row.folder}.log", log)
                    add_bytes(tar, "pack.json", json.dumps(
                        {"created_utc": utc_now(), "left_out_weights": left_out}).encode())
                for row, dest in members:
                    tar.add(dest, arcname=f"weights/{row.folder}")
                    packed.add(row.name)
            print(f"packed {path} ({path.stat().st_size / 2**20:.1f} MiB, "
                  f"{len(members)} weight folder(s))", flush=True)
    write_json_atomic(layout.packed, sorted(packed))
    if left_out:
        print(f"weights left out (over the size limits): {', '.join(left_out)}", flush=True)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def unpack_mode(files: list[str], layout: Layout) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    for name in files:
        with tarfile.open(name, "r:gz") as tar:
            tar.extractall(layout.root, filter="data")
        print(f"unpacked {name} into {layout.root}", flush=True)


# ---------------------------------------------------------------------------- measure (CPU)

def weights_source(layout: Layout, row: Row, result: dict) -> tuple[Path | None, str]:
    """The run folder to export and what its weights are: the trained run (here or from a
    pack), else a same-shape untrained model. ONNX graphs are static: every path runs for
    every token whatever the weights, so the decode time does not depend on their values."""
    from qtf_edge.runs import RunError, load_run, save_run

    for folder in (layout.train(row), layout.weights(row)):
        try:
            load_run(folder)
            return folder, "trained"
        except RunError:
            continue
    description = result["description"]
    import torch

    from qtf_edge.model import QTensorFormer
    from qtf_edge.tt import TTLinear

    torch.manual_seed(0)
    model = QTensorFormer(ModelConfig.from_dict(description["config"])).eval()
    ranks = {name: list(m.ranks[1:-1]) for name, m in model.named_modules()
             if isinstance(m, TTLinear)}
    if ranks != description["tt_ranks"]:
        return None, "weights not here, and their TT ranks differ from the config's"
    folder = layout.untrained(row)
    if not (folder / "model.safetensors").is_file():
        save_run(folder, model, layout.tokenizer, command=f"untrained stand-in of {row.name}",
                 overwrite=True)
    return folder, "untrained, same shape (trained weights too large to bring back)"


def export_bundle(source: Path, bundle: Path, quick: bool) -> tuple[dict, float]:
    """qtf-edge export for the cpu target (QTF distilled to its deploy form first); an
    existing bundle of the same source weights is reused."""
    from qtf_edge.export.bundle import verify_bundle
    from qtf_edge.export.pipeline import ExportOptions, export_run
    from qtf_edge.runs import sha256_file

    source_sha = sha256_file(source / "model.safetensors")
    if (bundle / "manifest.json").is_file():
        try:
            manifest = verify_bundle(bundle)
            if manifest["source"]["model_sha256"] == source_sha:
                return manifest, 0.0
        except ValueError:
            pass
    # Distillation calibrates and the bundle validates on the shipped excerpts (the same
    # distribution as WikiText-2); neither is a reported perplexity.
    options = (ExportOptions(target="cpu", distill=True, eval_tokens=1024, calib_tokens=1024,
                             decode_windows=1, decode_steps=8, force=True) if quick
               else ExportOptions(target="cpu", distill=True, force=True))
    start = time.perf_counter()
    export_run(source, bundle, options)
    return verify_bundle(bundle), time.perf_counter() - start


def local_valid_text(args, meta: dict) -> str:
    """The validation text the plan recorded, or this machine's copy of it (the plan was
    written on the GPU machine, whose paths differ)."""
    recorded = meta["data"]["valid"]
    return recorded if Path(recorded).is_file() else data_paths(args)["valid"]


def bench_prompt(valid_text: str, words: int) -> str:
    """The first `words` words of the first long enough validation line: a fixed prompt."""
    from qtf_edge.data import read_corpus

    for line in read_corpus(valid_text):
        if len(line.split()) >= words:
            return " ".join(line.split()[:words])
    raise ValueError(f"{valid_text}: no line of {words} words for the benchmark prompt")


def export_all(args, layout: Layout, plan: list[Row]) -> dict[str, tuple]:
    """{row name: (row, manifest, weights, export seconds)} of every finished latency row.
    The exports run in up to --jobs-per-gpu processes at once, one per core (torch.onnx's
    export is mostly one thread of Python); a failed one is recorded and the others go on."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    sources = {}
    for row in plan:
        result = read_json(layout.result(row))
        if not row.latency or not result or result.get("status") != "done":
            continue
        source, weights = weights_source(layout, row, result)
        if source is None:
            write_json_atomic(layout.latency(row), {"row": row.name, "error": weights})
        else:
            sources[row.name] = (row, source, weights)
    bundles = {}
    # spawn, not fork: forking a process that has run torch's thread pools can hang
    context = multiprocessing.get_context("spawn")
    workers = max(1, min(args.jobs_per_gpu, os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {name: pool.submit(export_bundle, source, layout.bundle(row), args.quick)
                   for name, (row, source, _) in sources.items()}
        for name, future in futures.items():
            row, _, weights = sources[name]
            try:
                manifest, seconds = future.result()
            # any exporter error: recorded, and the other rows go on
            except Exception as error:  # noqa: BLE001
                write_json_atomic(layout.latency(row), {"row": name, "error": f"export: {error}"})
                say(args, f"export {name}: failed ({error})")
                continue
            say(args, f"export {name} ({weights.split(',')[0]} weights): "
                      + (f"{seconds:.0f} s" if seconds else "reused"))
            bundles[name] = (row, manifest, weights, seconds)
    return bundles


def measure_mode(args, layout: Layout, plan: list[Row], meta: dict) -> None:
    """Export each finished latency row, then time every bundle --bench-rounds times,
    interleaved (this VM's speed drifts; a row's figure is the median of its rounds), one
    bundle at a time."""
    from qtf_edge.host import describe_host
    from qtf_edge.profile.measure import measure_artifact

    settings = QUICK_BENCH if meta.get("quick") else BENCH
    prompt = bench_prompt(local_valid_text(args, meta), settings["prompt_words"])
    new_tokens, runs = settings["new_tokens"], settings["runs"]
    bundles = export_all(args, layout, plan)
    timings = {name: [] for name in bundles}
    for round_index in range(args.bench_rounds):
        say(args, f"bench round {round_index + 1}/{args.bench_rounds} "
                  f"({len(bundles)} bundles, one thread)")
        for name, (row, manifest, _, _) in bundles.items():
            timings[name].append(measure_artifact(layout.bundle(row), manifest, "onnx", prompt,
                                                  new_tokens, runs, threads=1))
    for name, (row, manifest, weights, seconds) in bundles.items():
        rounds = timings[name]
        write_json_atomic(layout.latency(row), {
            "row": name, "weights": weights, "export_s": seconds, "host": describe_host(1),
            "measured_utc": utc_now(), "prompt_tokens": rounds[0]["prompt_tokens"],
            "new_tokens": new_tokens, "runs": runs, "rounds_n": len(rounds), "threads": 1,
            "decode_ms": statistics.median(r["decode_ms_per_token"]["median"] for r in rounds),
            "prefill_ms": statistics.median(r["prefill_ms"]["median"] for r in rounds),
            "onnx_mb": rounds[0]["file_mb"],
            "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in rounds), "rounds": rounds})


def say(args, text: str) -> None:
    if not args.quiet:
        print(text, flush=True)


# ---------------------------------------------------------------------------- report: figures

def fmt(value, spec: str = ".3g", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def spread(values: list[float]) -> dict | None:
    """Mean, sample standard deviation (None for one value), min, max and n."""
    if not values:
        return None
    return {"mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values)}


def fmt_spread(s: dict | None, spec: str = ".1f") -> str:
    if s is None:
        return "-"
    if s["sd"] is None:
        return format(s["mean"], spec)
    return f"{format(s['mean'], spec)} ± {format(s['sd'], spec)} (n={s['n']})"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


class Results:
    """The finished rows and their latencies, looked up by (group, size, variant)."""

    def __init__(self, layout: Layout, plan: list[Row]):
        self.plan = plan
        self.rows = {r.name: read_json(layout.result(r)) for r in plan}
        self.latency = {r.name: read_json(layout.latency(r)) for r in plan}
        self.vocab_size = plan[0].train["vocab_size"]

    def width(self, size: str) -> int:
        """d_model of a size's core/scale rows in this plan."""
        row = next(r for r in self.plan if r.size == size and r.variant == "qtf")
        return {**PRESETS[size][0], **row.model}["d_model"]

    def evaluated_tokens(self) -> set[int]:
        return {r["evaluation"]["tokens"] for r in self.rows.values()
                if r and r.get("status") == "done"}

    def runs(self, group: str, size: str, variant: str) -> list[dict]:
        prefix = f"{group}/{size}/{variant}/"
        return [v for k, v in self.rows.items()
                if k.startswith(prefix) and v and v.get("status") == "done"]

    def row_names(self, group: str, size: str, variant: str) -> list[str]:
        return [r.name for r in self.plan if r.name.startswith(f"{group}/{size}/{variant}/")]

    def figures(self, group: str, size: str, variant: str) -> dict:
        """Every figure of one architecture: parameters, MB, perplexity over its seeds,
        estimates, routed share, measured latency (seed 0)."""
        runs = self.runs(group, size, variant)
        names = self.row_names(group, size, variant)
        latency = self.latency.get(names[0]) if names else None
        if latency and "error" in latency:
            latency = {"error": latency["error"]}
        if not runs:
            return {"rows": names, "finished": 0, "latency": latency}
        first = runs[0]
        params = first["description"]["params"]["total"]
        estimates = {p: first["description"]["estimates"][p] for p in ENERGY_PROFILES}
        routed = [r["evaluation"]["routed_fraction"] for r in runs
                  if r["evaluation"]["routed_fraction"] is not None]
        return {
            "rows": names, "finished": len(runs), "params": params,
            "weights_mb": params * 4 / 1e6,
            "perplexity_per_word": spread([r["evaluation"]["perplexity_per_word"] for r in runs]),
            "perplexity_per_token": spread([r["evaluation"]["perplexity_per_token"]
                                            for r in runs]),
            "energy_uj_per_query": {p: e["per_query"]["energy_uj"] for p, e in estimates.items()},
            "energy_uj_per_decoded_token": {p: e["per_decoded_token"]["energy_uj"]
                                            for p, e in estimates.items()},
            "query_tokens": first["description"]["flops"]["query_tokens"],
            "quantum_path_usage": spread(routed),
            "latency": latency,
            "decode_ms": latency.get("decode_ms") if latency else None,
            "training": {k: first["training"][k] for k in ("steps", "tokens_seen", "batch_size",
                                                          "context_length")},
            "budget": first["training"].get("budget"),
            "budget_error": first.get("budget_error"),
            "tt_ranks": first["description"]["tt_ranks"],
        }

    def status(self, group: str, size: str, variant: str) -> str:
        rows = [self.rows.get(n) for n in self.row_names(group, size, variant)]
        states = [r["status"] if r else "not trained" for r in rows]
        return ", ".join(sorted(set(states)))


def ppl(figures: dict) -> float | None:
    s = figures.get("perplexity_per_word")
    return s["mean"] if s else None


def energy(figures: dict, profile: str) -> float | None:
    return (figures.get("energy_uj_per_query") or {}).get(profile)


# ---------------------------------------------------------------------------- report: tables

def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def core_table(results: Results) -> tuple[list[dict], str]:
    """Dense against QTF at small (d=128) and large (d=512), beside the card."""
    data, lines = [], []
    for size in ("small", "large"):
        dense, qtf = results.figures("core", size, "dense"), results.figures("core", size, "qtf")
        card_params = CARD["params"][size]
        entries = [
            ("total parameters", card_params["dense"], card_params["qtf"],
             dense.get("params"), qtf.get("params"), ",.0f"),
            ("weights MB (float32)", None, None, dense.get("weights_mb"), qtf.get("weights_mb"),
             ".2f"),
            ("validation word perplexity", CARD["perplexity"]["dense"] if size == "small" else None,
             (CARD["perplexity"]["qtf_low"], CARD["perplexity"]["qtf_high"]) if size == "small"
             else None, dense.get("perplexity_per_word"), qtf.get("perplexity_per_word"), ".1f"),
        ]
        for profile in ENERGY_PROFILES:
            card = CARD["energy_uj"][profile] if size == "small" else {}
            entries.append(((f"energy uJ per query, {profile} (estimated, "
                             f"{qtf.get('query_tokens', '?')} tokens)"), card.get("dense"),
                            card.get("qtf"), energy(dense, profile), energy(qtf, profile), ",.0f"))
            entries.append((f"energy uJ per decoded token, {profile} (estimated)", None, None,
                            (dense.get("energy_uj_per_decoded_token") or {}).get(profile),
                            (qtf.get("energy_uj_per_decoded_token") or {}).get(profile), ",.1f"))
        entries += [
            ("quantum path usage (routed to QKSAM)", None,
             CARD["quantum_path_usage"] if size == "small" else None, None,
             qtf.get("quantum_path_usage"), ".3f"),
            ("CPU decode ms per token (ONNX, 1 thread, measured)", None, None,
             dense.get("decode_ms"), qtf.get("decode_ms"), ".3f"),
            ("ONNX float graphs MB (prefill + decode)", None, None,
             latency_field(dense, "onnx_mb"), latency_field(qtf, "onnx_mb"), ".2f"),
            ("peak RSS MB while decoding (run.py, measured)", None, None,
             latency_field(dense, "peak_rss_mb"), latency_field(qtf, "peak_rss_mb"), ".1f"),
        ]
        for metric, card_dense, card_qtf, ours_dense, ours_qtf, spec in entries:
            if metric.startswith("CPU decode"):  # say where the weights were stand-ins
                ours_dense, ours_qtf = (latency_cell(f) for f in (dense, qtf))
            mean_dense, mean_qtf = (v["mean"] if isinstance(v, dict) else
                                    float(v.split()[0]) if isinstance(v, str) else v
                                    for v in (ours_dense, ours_qtf))
            card_ratio = (ratio(card_qtf, card_dense) if not isinstance(card_qtf, tuple)
                          else ratio(card_qtf[1], card_dense))
            if metric.startswith("CPU decode") and size == "small":
                card_ratio = CARD["cpu_latency_ratio"]
            record = {"size": size, "metric": metric, "card_dense": card_dense,
                      "card_qtf": card_qtf, "card_ratio": card_ratio, "dense": ours_dense,
                      "qtf": ours_qtf, "ratio": ratio(mean_qtf, mean_dense)}
            data.append(record)
            lines.append([size, metric, fmt_card(card_dense, spec), fmt_card(card_qtf, spec),
                          fmt(card_ratio, ".2f"), fmt_value(ours_dense, spec),
                          fmt_value(ours_qtf, spec), fmt(record["ratio"], ".2f")])
    header = ["size", "metric", "card dense", "card QTF", "card QTF/dense", "our dense",
              "our QTF", "our QTF/dense"]
    return data, markdown_table(header, lines)


def latency_field(figures: dict, key: str):
    return (figures.get("latency") or {}).get(key)


def latency_cell(figures: dict):
    """The decode ms, or a string saying it was timed on same-shape untrained weights."""
    value, latency = figures.get("decode_ms"), figures.get("latency") or {}
    if value is not None and latency.get("weights", "").startswith("untrained"):
        return f"{value:.3f} (untrained weights, same shape)"
    return value


def fmt_card(value, spec: str) -> str:
    if isinstance(value, tuple):
        return f"{format(value[0], spec)}-{format(value[1], spec)}"
    return fmt(value, spec, missing="not given")


def fmt_value(value, spec: str) -> str:
    if isinstance(value, str):
        return value
    return fmt_spread(value, spec) if isinstance(value, dict) else fmt(value, spec)


EFFICIENCY_DEFINITION = (
    "efficiency score = (E_dense / E_row) x (PPL_dense / PPL_row): the estimated energy "
    "saving factor (cpu_xeon, per query) times the share of the dense model's perplexity "
    "kept. The dense model scores 1; above 1, the row saves more energy than it loses in "
    "perplexity (both as factors). The card does not define its score; this is ours.")


def ablation_table(results: Results) -> tuple[list[dict], str]:
    dense = results.figures("core", "small", "dense")
    base_ppl, base_energy, base_ms = ppl(dense), energy(dense, BUDGET_PROFILE), dense.get("decode_ms")
    entries = [("dense", "core", "dense")]
    entries += [(label, "core" if variant == "daruan" else "ablation",
                 "qtf" if variant == "daruan" else variant) for variant, label, _ in ABLATION]
    data, lines = [], []
    for label, group, variant in entries:
        f = results.figures(group, "small", variant)
        row_ppl, row_energy = ppl(f), energy(f, BUDGET_PROFILE)
        score = (ratio(base_energy, row_energy) * ratio(base_ppl, row_ppl)
                 if None not in (base_energy, row_energy, base_ppl, row_ppl) else None)
        record = {"row": label, "rows": f["rows"], "params": f.get("params"),
                  "perplexity_per_word": f.get("perplexity_per_word"),
                  "perplexity_delta": delta(row_ppl, base_ppl),
                  "energy_uj_per_query": row_energy, "energy_delta": delta(row_energy, base_energy),
                  "decode_ms": f.get("decode_ms"), "latency_delta": delta(f.get("decode_ms"), base_ms),
                  "quantum_path_usage": f.get("quantum_path_usage"), "efficiency_score": score,
                  "budget": f.get("budget"), "budget_error": f.get("budget_error"),
                  "status": results.status(group, "small", variant)}
        data.append(record)
        lines.append([label, fmt(record["params"], ",.0f"),
                      fmt_spread(record["perplexity_per_word"]), fmt_pct(record["perplexity_delta"]),
                      fmt(row_energy, ",.0f"), fmt_pct(record["energy_delta"]),
                      fmt(record["decode_ms"], ".3f"), fmt_pct(record["latency_delta"]),
                      fmt(score, ".2f"), quantum_cell(variant, record["quantum_path_usage"]),
                      ablation_note(results, group, variant, f)])
    header = ["row", "params", "val ppl/word", "Δ ppl", "est. uJ/query cpu_xeon", "Δ energy",
              "decode ms (CPU)", "Δ latency", "efficiency score", "quantum path", "note"]
    return data, markdown_table(header, lines)


def quantum_cell(variant: str, usage: dict | None) -> str:
    """The routed share; QKSAM without the router takes every token by construction."""
    if usage is None and variant == "qksam":
        return "all (no router)"
    return fmt_spread(usage, ".2f")


def ablation_note(results: Results, group: str, variant: str, figures: dict) -> str:
    """What happened to a row besides its figures: not finished, refused or rounded by
    its budget, latency not measured."""
    notes = []
    names = results.row_names(group, "small", variant)
    rows = [results.rows.get(n) or {} for n in names]
    done = sum(r.get("status") == "done" for r in rows)
    if done < len(rows):
        others = sorted({r.get("status", "not trained") for r in rows} - {"done"})
        errors = sorted({r["error"] for r in rows if r.get("error")})
        notes.append(f"{done} of {len(rows)} seeds done ({', '.join(others)}"
                     + (f": {'; '.join(errors)}" if errors else "") + ")")
    budget = figures.get("budget")
    if budget and budget.get("final"):
        final = budget["final"]
        ranks = [r["max_rank"] for r in budget["rounds"]]
        limits = ", ".join(f"{k} <= {v:,.0f}" for k, v in final["limits"].items())
        notes.append(f"budget {limits} (estimated) {'met' if final['met'] else 'NOT met'}"
                     + (f", TT ranks rounded to <= {min(ranks)}" if ranks else ""))
    latency = figures.get("latency") or {}
    if "error" in latency:
        notes.append(f"latency: {latency['error']}")
    elif latency.get("weights", "").startswith("untrained"):
        notes.append("latency on untrained weights of the same shape")
    return "; ".join(notes) or "-"


def delta(value, base):
    return None if value is None or base in (None, 0) else value / base - 1


def fmt_pct(value) -> str:
    return "-" if value is None else f"{value:+.1%}"


def scale_sources(size: str) -> tuple[str, str]:
    """The group holding a size's dense and QTF rows: core for small and large."""
    return ("core", "core") if size in ("small", "large") else ("scale", "scale")


def scale_table(results: Results) -> tuple[list[dict], str]:
    data, lines = [], []
    for size in SIZES:
        group, _ = scale_sources(size)
        dense, qtf = results.figures(group, size, "dense"), results.figures(group, size, "qtf")
        fields = {**PRESETS[size][0], **next(r.model for r in results.plan if r.size == size
                                              and r.group == group)}
        card = CARD["params"].get(size, {})
        record = {"size": size, "d_model": fields["d_model"], "n_layers": fields["n_layers"],
                  "card_d_model_layers": CARD["scale"][size],
                  "dense_params": dense.get("params"), "qtf_params": qtf.get("params"),
                  "compression": ratio(dense.get("params"), qtf.get("params")),
                  "card_compression": ratio(card.get("dense"), card.get("qtf")),
                  "dense_mb": dense.get("weights_mb"), "qtf_mb": qtf.get("weights_mb"),
                  "dense_ppl": dense.get("perplexity_per_word"),
                  "qtf_ppl": qtf.get("perplexity_per_word"),
                  "training": qtf.get("training") or dense.get("training"),
                  "status": f"dense {results.status(group, size, 'dense')}; "
                            f"QTF {results.status(group, size, 'qtf')}"}
        data.append(record)
        t = record["training"]
        lines.append([size, f"{fields['d_model']} / {fields['n_layers']}",
                      fmt(record["dense_params"], ",.0f"), fmt(record["qtf_params"], ",.0f"),
                      fmt(record["compression"], ".2f"), fmt(record["card_compression"], ".2f",
                                                             "not given"),
                      fmt(record["dense_mb"], ".2f"), fmt(record["qtf_mb"], ".2f"),
                      fmt_spread(record["dense_ppl"]), fmt_spread(record["qtf_ppl"]),
                      f"{t['steps']} x {t['batch_size']} x {t['context_length']}" if t else "-",
                      fmt(t and t["tokens_seen"], ",d")])
    header = ["size", "d / layers", "dense params", "QTF params", "compression",
              "card compression", "dense MB", "QTF MB", "dense ppl/word", "QTF ppl/word",
              "steps x batch x context", "tokens"]
    return data, markdown_table(header, lines)


def baseline_table(results: Results) -> tuple[list[dict], str]:
    data, lines = [], []
    for size in SIZES:
        group, _ = scale_sources(size)
        qtf, dense = results.figures(group, size, "qtf"), results.figures(group, size, "dense")
        variant = next(r.variant for r in results.plan if r.group == "baseline" and r.size == size)
        narrow = results.figures("baseline", size, variant)
        verdict = baseline_verdict(qtf.get("perplexity_per_word"),
                                   narrow.get("perplexity_per_word"))
        record = {"size": size, "qtf_params": qtf.get("params"), "qtf_ppl": qtf.get(
            "perplexity_per_word"), "baseline": variant, "baseline_params": narrow.get("params"),
                  "baseline_ppl": narrow.get("perplexity_per_word"),
                  "dense_ppl": dense.get("perplexity_per_word"),
                  "qtf_over_baseline": ratio(ppl(qtf), ppl(narrow)), "verdict": verdict}
        data.append(record)
        lines.append([size, fmt(record["qtf_params"], ",.0f"), fmt_spread(record["qtf_ppl"]),
                      variant, fmt(record["baseline_params"], ",.0f"),
                      fmt_spread(record["baseline_ppl"]), fmt_spread(record["dense_ppl"]),
                      fmt(record["qtf_over_baseline"], ".3f"), verdict])
    header = ["size", "QTF params", "QTF ppl/word", "width-matched dense", "its params",
              "its ppl/word", "full dense ppl/word", "QTF / matched", "TT beats a smaller dense?"]
    return data, markdown_table(header, lines)


def baseline_verdict(qtf: dict | None, narrow: dict | None) -> str:
    """Yes or no by the means; 'within the seed spread' when the ranges of the seeds overlap."""
    if not qtf or not narrow:
        return "not measured yet"
    better = qtf["mean"] < narrow["mean"]
    if qtf["n"] > 1 and narrow["n"] > 1 and qtf["min"] <= narrow["max"] \
            and narrow["min"] <= qtf["max"]:
        return f"{'yes' if better else 'no'}, within the seed spread"
    return "yes" if better else "no"


# ---------------------------------------------------------------------------- report: verdicts

def verdict(claim: str, card: str, ours: str, outcome: str, why: str) -> dict:
    return {"claim": claim, "card": card, "ours": ours, "verdict": outcome, "why": why}


def width_label(results: Results, size: str) -> str:
    """'d=128' (the card's width of a size), with ours where they differ (--quick)."""
    card = CARD["scale"][size][0]
    ours = results.width(size)
    return f"d={card}" if ours == card else f"d={card} in the card, d={ours} here"


def claims(results: Results) -> list[dict]:
    """One plain statement per claim of the card, computed from the figures."""
    out = []
    for size in ("small", "large"):
        dense, qtf = results.figures("core", size, "dense"), results.figures("core", size, "qtf")
        card = CARD["params"][size]
        card_ratio, ours = card["dense"] / card["qtf"], ratio(dense.get("params"), qtf.get("params"))
        text = (f"{dense['params']:,} -> {qtf['params']:,} ({ours:.2f}x)" if ours else "-")
        out.append(verdict(
            f"parameters ({width_label(results, size)})",
            f"{card['dense'] / 1e6:.2f}M -> {card['qtf'] / 1e6:.2f}M ({card_ratio:.2f}x)", text,
            pending(ours) or ("reproduced" if ours >= COMPRESSION_TOLERANCE * card_ratio
                              else "not reproduced"),
            "compared as the compression ratio (dense / QTF): absolute counts depend on the "
            f"vocabulary ({results.vocab_size} here for every row; the card does not give its "
            "own)"))
    dense, qtf = results.figures("core", "small", "dense"), results.figures("core", "small", "qtf")
    high = CARD["perplexity"]["qtf_high"] / CARD["perplexity"]["dense"]
    ours = ratio(ppl(qtf), ppl(dense))
    out.append(verdict(
        f"validation perplexity, dense vs QTF ({width_label(results, 'small')})",
        f"~{CARD['perplexity']['dense']:.0f} vs ~{CARD['perplexity']['qtf_low']:.0f}-"
        f"{CARD['perplexity']['qtf_high']:.0f} (QTF/dense <= {high:.3f})",
        f"{fmt_spread(dense.get('perplexity_per_word'))} vs "
        f"{fmt_spread(qtf.get('perplexity_per_word'))} (QTF/dense {fmt(ours, '.3f')})",
        pending(ours) or ("reproduced" if ours <= high else "not reproduced"),
        "compared as the ratio of word perplexities on WikiText-2 valid at equal steps, data, "
        "tokenizer and seeds; the card's absolute ~65 is not comparable (it gives neither its "
        "tokenizer, nor per-token or per-word, nor its training budget)"))
    for profile in ENERGY_PROFILES:
        card = CARD["energy_uj"][profile]
        card_ratio = card["qtf"] / card["dense"]
        ours = ratio(energy(qtf, profile), energy(dense, profile))
        out.append(verdict(
            f"energy per query, {profile} ({'CPU' if profile == 'cpu_xeon' else 'mobile'})",
            f"{card['dense']:.0f} -> {card['qtf']:.0f} uJ ({card_ratio:.2f}x)",
            f"{fmt(energy(dense, profile), ',.0f')} -> {fmt(energy(qtf, profile), ',.0f')} uJ "
            f"({fmt(ours, '.2f')}x), estimated",
            pending(ours) or ("reproduced (estimated)" if ours <= ENERGY_TOLERANCE * card_ratio
                              else "not reproduced (estimated)"),
            "no power meter or readable RAPL counter here, so energy is not measurable; the "
            "figures are the cost model's estimates (FLOPs and bytes x the profile's rates) for "
            f"a forward pass over {qtf.get('query_tokens', '?')} tokens, compared as a ratio. "
            "The card does not define its query; our dense estimate is "
            f"{fmt(ratio(energy(dense, profile), card['dense']), '.3g')} x its {card['dense']:.0f}"
            " uJ per query and "
            f"{fmt(ratio(dense.get('energy_uj_per_decoded_token', {}).get(profile), card['dense']), '.2g')}"
            " x it per decoded token"))
    usage = qtf.get("quantum_path_usage")
    out.append(verdict(
        "quantum path usage", f"{CARD['quantum_path_usage']:.0%}",
        fmt_spread(usage, ".3f"),
        pending(usage) or ("reproduced" if abs(usage["mean"] - CARD["quantum_path_usage"])
                           <= QUANTUM_USAGE_TOLERANCE else "not reproduced"),
        "share of validation tokens routed to QKSAM. The router is steered toward its "
        "quantum_fraction of 0.2 during training, so agreement is by design, not a finding"))
    ours = ratio(qtf.get("decode_ms"), dense.get("decode_ms"))
    low, high_band = (CARD["cpu_latency_ratio"] * b for b in LATENCY_BAND)
    outcome = pending(ours) or ("reproduced" if low <= ours <= high_band else
                                f"not reproduced ({'slower' if ours > high_band else 'faster'} "
                                f"than the card concedes)")
    out.append(verdict(
        f"CPU latency against dense ({width_label(results, 'small')})",
        f"+{CARD['cpu_latency_ratio'] - 1:.0%}",
        f"{fmt(dense.get('decode_ms'), '.3f')} vs {fmt(qtf.get('decode_ms'), '.3f')} ms per token "
        f"({'+' if ours and ours >= 1 else ''}{fmt(ours and ours - 1, '.0%')}), measured",
        outcome, "ONNX Runtime decode with the KV cache, one thread, on this CPU; QTF in its "
        "distilled deploy form (the card's latency setting is not given)"))
    out.append(verdict("ablation rows", "per-row figures not quoted", "table below",
                       "not measurable here",
                       "the issue quotes the card's ablation rows but not their numbers; ours "
                       "are published for comparison with the card itself"))
    out.append(verdict("scale-up (medium, xl)", "configurations only", "table below",
                       "not measurable here",
                       "the card's medium and xl figures are not quoted; the d=128 and d=512 "
                       "parameter claims are judged above"))
    return out


def pending(value) -> str | None:
    return "not measured yet" if value is None else None


# ---------------------------------------------------------------------------- report: runs, plots

def runs_table(results: Results) -> tuple[list[dict], str]:
    """Per row: status, the training budget, time, hardware, commit and command."""
    data, lines = [], []
    for row in results.plan:
        result = results.rows.get(row.name)
        sessions = (result or {}).get("sessions", [])
        training = (result or {}).get("training") or {}
        record = {"row": row.name, "status": (result or {}).get("status", "not trained"),
                  "steps": training.get("steps"), "planned_steps": row.train["steps"],
                  "batch_size": row.train["batch_size"], "tokens_seen": training.get("tokens_seen"),
                  "train_s": training.get("elapsed_s"), "tokens_per_s": training.get("tokens_per_s"),
                  "hardware": sorted({s["hardware"] for s in sessions}),
                  "commits": sorted({s["commit"] for s in sessions}),
                  "commands": list(dict.fromkeys(s["command"] for s in sessions)),
                  "error": (result or {}).get("error")}
        data.append(record)
        lines.append([row.name, record["status"], f"{fmt(record['steps'])} / {row.train['steps']}",
                      f"{row.train['batch_size']} x {tokens_per_step(row) // row.train['batch_size']}",
                      fmt(record["tokens_seen"], ",d"), fmt(record["train_s"], ".1f"),
                      fmt(record["tokens_per_s"], ",.0f"),
                      "; ".join(record["hardware"]) or "-", "; ".join(c[:12] for c in
                                                                     record["commits"]) or "-"])
    header = ["row", "status", "steps (done / planned)", "batch x context", "tokens", "train s",
              "tok/s", "hardware", "commit"]
    commands: dict[str, list[str]] = {}
    for record in data:
        for command in record["commands"]:
            commands.setdefault(command, []).append(record["row"])
    listing = "\n".join(f"- `{command}`: {len(rows)} row(s)" for command, rows in commands.items())
    return data, (markdown_table(header, lines) + "\n\nCommands that trained these rows (each "
                  "row's sessions, resumes included, are in reference_runs.json):\n\n"
                  + (listing or "- none yet"))


def plot_points(results: Results) -> dict[str, list[tuple[int, float, float | None, str]]]:
    """(params, word perplexity, decode ms, label) per family."""
    families = {"dense (full width)": [], "dense (width-matched to QTF)": [], "QTF": [],
                "QTF ablation steps": []}
    for row in results.plan:
        if row.seed != 0:
            continue
        f = results.figures(row.group, row.size, row.variant)
        if not f.get("params"):
            continue
        if row.group == "baseline":
            family = "dense (width-matched to QTF)"
        elif row.group == "ablation":
            family = "QTF ablation steps"
        else:
            family = "QTF" if row.variant == "qtf" else "dense (full width)"
        families[family].append((f["params"], ppl(f), f.get("decode_ms"),
                                 f"{row.size} {row.variant}"))
    return families


def write_plots(results: Results, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = plot_points(results)
    markers = {"dense (full width)": "s", "dense (width-matched to QTF)": "D", "QTF": "o",
               "QTF ablation steps": "^"}
    written = []
    for index, (name, ylabel, title) in enumerate((
            ("reference_ppl_vs_params.png", "validation word perplexity (seed 0)",
             "Perplexity against parameters, WikiText-2"),
            ("reference_latency_vs_params.png", "CPU decode ms per token (ONNX, 1 thread)",
             "Measured CPU decode latency against parameters"))):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for family, points in families.items():
            shown = [(p, v[index]) for p, *v, _ in points if v[index] is not None]
            if shown:
                ax.scatter([p for p, _ in shown], [v for _, v in shown], label=family,
                           marker=markers[family])
                for (p, *v, label) in points:
                    if v[index] is not None and family != "QTF ablation steps":
                        ax.annotate(label.split()[0], (p, v[index]), fontsize=7,
                                    xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("total parameters")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "nothing measured yet", ha="center", transform=ax.transAxes)
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------------- report: outputs

MARKER = "<!-- reference_tables.py: {} {} -->"
GENERATED_BLOCKS = ("summary", "claims", "core", "ablation", "scale", "baseline", "runs")


def replace_block(text: str, name: str, body: str) -> str:
    begin, end = MARKER.format("BEGIN", name), MARKER.format("END", name)
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise SystemExit(f"error: REFERENCE.md lacks the markers of the {name!r} block "
                         f"({begin} ... {end}); restore them from git")
    return text[:start + len(begin)] + "\n" + body.strip() + "\n" + text[stop:]


def summary_block(results: Results, meta: dict) -> str:
    hardware_seen = sorted({s["hardware"] for r in results.rows.values() if r
                            for s in r.get("sessions", [])})
    hosts = sorted({v.get("host") for v in results.latency.values() if v and v.get("host")})
    finished = sum(1 for r in results.rows.values() if r and r.get("status") == "done")
    return "\n".join([
        (f"Generated {utc_now()} by `python benchmarks/reference_tables.py --report` from "
         f"{finished} of {len(results.plan)} rows."),
        "",
        (f"- Data: `{shown_path(meta['data']['train'])}` (sha256 of its lines "
         f"{meta.get('train_sha256', '?')[:12]}) and `{shown_path(meta['data']['valid'])}`; "
         f"word perplexity on {evaluated(results, meta.get('quick'))} of the validation text."),
        (f"- Tokenizer: one byte-level BPE of {meta['vocab_size']} tokens for every row, sha256 "
         f"{meta.get('tokenizer_sha256', '?')[:16]}."),
        f"- Training hardware: {'; '.join(hardware_seen) or 'none yet'}.",
        f"- Latency host: {'; '.join(hosts) or 'none yet'}; {latency_settings(results)}.",
        f"- Plan commit: {meta.get('commit')}; plan command: `{meta.get('command')}`.",
    ])


def latency_settings(results: Results) -> str:
    """How the bundles were timed, from the latency records themselves."""
    records = [v for v in results.latency.values() if v and "decode_ms" in v]
    if not records:
        return "no bundle timed yet"
    first = records[0]
    return (f"run.py --bench, ONNX Runtime, {first.get('threads', 1)} thread, prompt of "
            f"{first['prompt_tokens']} tokens, {first['new_tokens']} new tokens x "
            f"{first['runs']} generations, median of {first.get('rounds_n', 1)} interleaved "
            f"round(s)")


def shown_path(path: str) -> str:
    """A data path relative to the repository (or its parent) where it lies there."""
    for base in (REPO, REPO.parent):
        try:
            return str(Path(path).resolve().relative_to(base))
        except ValueError:
            continue
    return path


def evaluated(results: Results, quick: bool) -> str:
    """Which validation tokens the perplexities are over (--quick caps them)."""
    counts = " / ".join(f"{t:,}" for t in sorted(results.evaluated_tokens())) or "?"
    return f"the first {counts} tokens" if quick else f"all ({counts} tokens)"


def claims_block(claim_rows: list[dict]) -> str:
    return markdown_table(["claim", "card", "ours", "verdict", "why"],
                          [[c["claim"], c["card"], c["ours"], f"**{c['verdict']}**", c["why"]]
                           for c in claim_rows])


def report_outputs(args, layout: Layout, quick: bool) -> tuple[Path, Path]:
    """(folder for JSON and plots, REFERENCE.md to fill). A quick plan's report goes under
    its runs folder, a REFERENCE.md filled from the committed skeleton included: quick
    figures never reach benchmarks/, whatever the flags."""
    if quick:
        return layout.root / "report", layout.root / "report" / "REFERENCE.md"
    return Path(args.results_dir), Path(args.reference_md)


def check_one_tokenizer(results: Results, meta: dict) -> None:
    mismatched = {r["tokenizer_sha256"] for r in results.rows.values()
                  if r and r.get("status") == "done"} - {meta.get("tokenizer_sha256")}
    if mismatched:
        raise SystemExit(f"error: rows trained with another tokenizer ({', '.join(mismatched)}); "
                         f"the tables would not be comparable")


def write_reference_md(path: Path, blocks: dict[str, str]) -> None:
    """Fill the generated blocks of REFERENCE.md (the committed skeleton when the file is
    not there yet); the text around them is kept as it is."""
    template = path if path.is_file() else REPO / "benchmarks" / "REFERENCE.md"
    text = template.read_text(encoding="utf-8")
    for name in GENERATED_BLOCKS:
        text = replace_block(text, name, blocks[name])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def report_mode(args, layout: Layout, plan: list[Row], meta: dict) -> None:
    results = Results(layout, plan)
    check_one_tokenizer(results, meta)
    tables = {"core": core_table(results), "ablation": ablation_table(results),
              "scale": scale_table(results), "baseline": baseline_table(results),
              "runs": runs_table(results)}
    claim_rows = claims(results)
    quick = bool(meta.get("quick"))
    out, reference_md = report_outputs(args, layout, quick)
    out.mkdir(parents=True, exist_ok=True)
    header = {"generated_utc": utc_now(), "card": CARD, "plan_commit": meta.get("commit"),
              "plan_command": meta.get("command"), "tokenizer_sha256": meta.get("tokenizer_sha256"),
              "vocab_size": meta["vocab_size"], "data": meta["data"], "quick": quick,
              "efficiency_score": EFFICIENCY_DEFINITION}
    if quick:
        write_json_atomic(out / "reference_quick.json",
                          {**header, "claims": claim_rows,
                           **{name: data for name, (data, _) in tables.items()}})
    else:
        for name, (data, _) in tables.items():
            write_json_atomic(out / f"reference_{name}.json", {**header, "rows": data})
        write_json_atomic(out / "reference_claims.json", {**header, "rows": claim_rows})
    plots = write_plots(results, out)
    blocks = {"summary": summary_block(results, meta), "claims": claims_block(claim_rows),
              **{name: markdown for name, (_, markdown) in tables.items()}}
    write_reference_md(reference_md, blocks)
    titles = {"summary": "Setup", "claims": "Claims and verdicts",
              "core": f"Core metrics (small {width_label(results, 'small')}, large "
                      f"{width_label(results, 'large')})",
              "ablation": f"Ablation (small, {width_label(results, 'small')})",
              "scale": "Scale-up",
              "baseline": "Honest baseline: dense shrunk by width to QTF's parameters",
              "runs": "Rows: budget, time, hardware, commit"}
    for name in GENERATED_BLOCKS:
        print(f"\n## {titles[name]}\n\n{blocks[name]}")
        if name == "ablation":
            print(f"\n{EFFICIENCY_DEFINITION}")
    print(f"\nJSON and plots in {out}: " + ", ".join(p.name for p in plots)
          + f"; tables in {reference_md}")


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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
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
            measure_mode(args, layout, plan, meta)
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


if __name__ == "__main__":
    sys.exit(main())
