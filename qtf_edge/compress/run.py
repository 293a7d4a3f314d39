"""`compress_run`: a run folder in, a compressed run folder out, with its report.

Reads the checkpoint, resolves the budget (relative keys against the input model on the
target profile), compresses (pipeline.py), measures validation perplexity before and
after truncation, optionally heals by short fine-tuning runs on the calibration text
(default: the shipped excerpt) that distil the uncompressed model's logits, keeping a
healed model only where it is closer to the input (healing.py), and measures again, then
writes the run and compress_report.json.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from qtf_edge.compress.healing import heal_and_choose, healing_workdir, publish_healed
from qtf_edge.compress.pipeline import compress_model
from qtf_edge.cost import EnergyEstimator
from qtf_edge.data import load_tokenizer
from qtf_edge.derived import calibration_windows, perplexity, validation_lines, write_derived_run
from qtf_edge.evaluate import token_windows
from qtf_edge.quant.blockwise import DEFAULT_BLOCK, MAX_BLOCK, MIN_BLOCK, is_block_size
from qtf_edge.runs import check_new_run_dir, load_run
from qtf_edge.tokens import token_stream
from qtf_edge.train.budget import ALL_KEYS, parse_budget
from qtf_edge.train.config import TrainConfig
from qtf_edge.train.distillation import mean_kl
from qtf_edge.train.setup import resolve_device

REPORT_FILE = "compress_report.json"


@dataclass(frozen=True)
class CompressOptions:
    budget: str                        # e.g. "params=500k,latency_ms=4" or "params=0.25x"
    target: str = "cpu_xeon"           # hardware profile for latency / energy
    embeddings: bool = False           # also the embedding table (and an untied head)
    allocator: str = "greedy"          # or "uniform" (one shared rank cap)
    # "whitened": activation-aware truncation (whitening.py); "plain": TT-SVD of the weights.
    method: str = "whitened"
    # How dense layers become TT: "low_rank" (W = A B) or "balanced" (TT cores over balanced
    # modes); a TT model keeps its own layout.
    layout: str = "low_rank"
    # Weigh layers by their measured loss sensitivity (greedy only). Plain discarded energy
    # spares large-norm layers (the embedding) and cuts projections to rank 1: on a dense
    # small model at 1/4 of its parameters, perplexity 1.6e8 against 2.5e4 weighted
    # (benchmarks/RESULTS.md). None: on for greedy, off for uniform.
    sensitivity: bool | None = None
    # Weight-only quantisation (qtf_edge/quant): the widths search.py may give each layer,
    # e.g. (4, 8); None: rank truncation only.
    bits: tuple[int, ...] | None = None
    block: int = DEFAULT_BLOCK         # inputs per int4 scale
    calib_tokens: int = 16384          # calibration tokens (input statistics, sensitivities)
    heal_steps: int = 0
    # Peak learning rates of the healing runs, one run each; the model closest to the input
    # (healed or not) is kept (healing.py). Rank cuts need a large one (dense `small` at 1/4
    # of its parameters: word perplexity 1211 after 1000 steps at 2e-4, 718 at 3e-3), mild
    # quantisation damage a small one (benchmarks/RESULTS.md).
    heal_lr: tuple[float, ...] = (3e-3, 3e-4)
    # Healing learns the uncompressed model's logits (train/distillation.py); 0: plain
    # next-token fine-tuning.
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    calib: str | None = None           # calibration and healing text (default: shipped excerpt)
    data: str | None = None            # validation text (default: shipped valid excerpt)
    eval_tokens: int | None = 32768
    seed: int = 0
    batch_size: int = 8
    device: str = "cpu"                # where healing runs (auto, cpu, cuda)


def size_limit(run_dir) -> float | None:
    """The size_mb limit `compress` met for this run (None: not a compressed run, or no
    size budget): export keeps the shipped weights within it."""
    path = Path(run_dir) / REPORT_FILE
    if not path.is_file():
        return None
    try:
        limit = json.loads(path.read_text(encoding="utf-8"))["limits"].get("size_mb")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{path}: unreadable compress report; expected the JSON that "
                         f"`qtf-edge compress` writes") from None
    if limit is not None and not (isinstance(limit, (int, float)) and limit > 0):
        raise ValueError(f"{path}: limits.size_mb is {limit!r}; expected a positive number")
    return limit


def compress_run(checkpoint, out, options: CompressOptions, *, overwrite: bool = False,
                 quiet: bool = True, command: str = "compress") -> dict:
    """Write the compressed model of `checkpoint` to `out`; returns the report."""
    start = time.perf_counter()
    budget = parse_budget(options.budget, keys=ALL_KEYS)  # bad keys first, naming --budget
    EnergyEstimator(options.target)  # an unknown --target: ProfileError naming it
    if options.bits is not None and not is_block_size(options.block):
        raise ValueError(f"--block {options.block}: expected a power of two in "
                         f"[{MIN_BLOCK}, {MAX_BLOCK}]")
    TrainConfig(distill_alpha=options.distill_alpha,  # bad distillation settings, named
                distill_temperature=options.distill_temperature)
    check_new_run_dir(out, overwrite)  # a taken --out fails before the work
    run = load_run(checkpoint)
    valid = validation_lines(options.data)
    tokenizer = load_tokenizer(run.tokenizer_path)
    if options.sensitivity and options.allocator != "greedy":
        raise ValueError("--sensitivity weighs the greedy allocator; drop --allocator uniform")
    sensitivity = options.allocator == "greedy" and options.sensitivity is not False
    windows = None
    if sensitivity or options.method == "whitened" or options.bits:
        windows = calibration_windows(tokenizer, options.calib, options.calib_tokens,
                                      run.config.context_length)
    device = resolve_device(options.device)
    result = compress_model(run.model, budget, options.target, embeddings=options.embeddings,
                            allocator=options.allocator, method=options.method,
                            layout=options.layout, calibration=windows,
                            sensitivity=sensitivity, bits=options.bits, block=options.block,
                            device=device, progress=(lambda line: None) if quiet else
                            (lambda line: print(line, file=sys.stderr, flush=True)))

    def evaluate(model) -> dict:
        return perplexity(model, tokenizer, valid, batch_size=options.batch_size,
                          max_tokens=options.eval_tokens, device=device)

    # The first eval_tokens of the validation text, as perplexity reads them.
    held = token_windows(token_stream(tokenizer, valid)[:options.eval_tokens],
                         run.config.context_length)

    def kl(model) -> float:  # how far from the input model's predictions
        value = mean_kl(model.to(device), run.model.to(device), held,
                        batch_size=options.batch_size, device=device)
        model.to("cpu"), run.model.to("cpu")
        return value

    report = {"source": str(checkpoint), "out": str(out), "options": asdict(options),
              "budget": budget.spec(), **result.to_dict(),
              "perplexity": {"before": evaluate(run.model), "truncated": evaluate(result.model)},
              "kl_to_source": {"truncated": kl(result.model)}}
    if not options.heal_steps:
        report["elapsed_s"] = time.perf_counter() - start
        write_derived_run(out, result.model, run, report, REPORT_FILE, command=command,
                          overwrite=overwrite, healed=False)
        return report
    if windows is None:
        windows = calibration_windows(tokenizer, options.calib, options.calib_tokens,
                                      run.config.context_length)
    with healing_workdir(Path(out)) as workdir:
        healing = heal_and_choose(
            run, result.model, windows, steps=options.heal_steps,
            learning_rates=options.heal_lr, calib=options.calib, data=options.data,
            seed=options.seed, distill_alpha=options.distill_alpha,
            distill_temperature=options.distill_temperature, device=options.device,
            batch_size=options.batch_size, quiet=quiet, command=command, workdir=workdir)
        report["healing"] = healing.trials
        if healing.folder is not None:
            report["perplexity"]["healed"] = evaluate(healing.model)
            report["kl_to_source"]["healed"] = kl(healing.model)
        report["elapsed_s"] = time.perf_counter() - start
        if healing.folder is None:
            write_derived_run(out, result.model, run, report, REPORT_FILE, command=command,
                              overwrite=overwrite, healed=False)
        else:
            publish_healed(healing.folder, Path(out), report, REPORT_FILE, overwrite=overwrite)
    return report
