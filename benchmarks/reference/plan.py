"""The plan (every row, its model and its training budget, built deterministically from the
presets) and the runs folder that holds it (Layout, plan.json, the rows' results)."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from qtf_edge.atomic import write_json_atomic
from qtf_edge.config import DENSE_SWITCHES, ModelConfig
from qtf_edge.presets import PRESETS, preset

from .card import CARD

REPO = Path(__file__).resolve().parents[2]
# The entry point: --train's jobs run it again (--job) as their own processes.
SCRIPT = REPO / "benchmarks" / "reference_tables.py"


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
