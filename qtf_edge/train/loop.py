"""The training loop: AdamW steps over random windows, evaluations, checkpoints.

    result = train_run(out="runs/tiny-qtf", preset_name="tiny")

A run folder is created by the first checkpoint (at step 0, once every input has been
checked) and updated in place by later ones; metrics.jsonl gets one record per
evaluation. Resuming (resume=RUN_DIR) continues from the last checkpoint to the same
weights an uninterrupted run reaches: batches depend only on (seed, step), and the
optimizer and RNG states are checkpointed.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from qtf_edge.cost.counts import count_params
from qtf_edge.runs import TRAIN_STATE_FILE, append_metrics, save_checkpoint, save_run
from qtf_edge.train import distributed
from qtf_edge.train.batches import random_batch
from qtf_edge.train.budget import (
    BudgetError,
    describe,
    fit_to_budget,
    measure,
    rebuild_optimizer,
    scheduled_steps,
    violations,
)
from qtf_edge.train.distillation import distillation_loss
from qtf_edge.train.interrupt import stop_on_sigint
from qtf_edge.train.optimizer import make_optimizer
from qtf_edge.train.progress import Progress
from qtf_edge.train.schedule import learning_rate
from qtf_edge.train.setup import (
    Session,
    estimate_on_target,
    load_checkpoint,
    prepare_session,
)
from qtf_edge.train.state import apply_train_state, train_state_bytes
from qtf_edge.train.validation import validation_loss

# The NaN guard halves the learning rate at each reload; below this scale it gives up.
MIN_LR_SCALE = 2.0**-10


class TrainingInterrupted(Exception):
    """SIGINT stopped the run after a checkpoint; the folder is complete and resumable."""

    def __init__(self, step: int, run_dir: Path):
        self.step, self.run_dir = step, run_dir
        super().__init__(f"interrupted at step {step}; resume with: qtf-edge train "
                         f"--resume {run_dir}")


class TrainingDiverged(RuntimeError):
    """The loss stayed non-finite even after repeated reloads with a smaller learning rate."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    step: int
    final: dict | None       # the last evaluation's metrics record
    params: int
    elapsed_s: float         # training time over every session of the run
    budget: dict | None = None  # --budget: limits, the final checkpoint's figures, met

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "steps": self.step, "params": self.params,
                "elapsed_s": self.elapsed_s, "final": self.final, "budget": self.budget}


def train_run(out=None, *, preset_name: str | None = None, arch: str | None = None,
              data=None, valid=None, config_file=None, model_overrides: dict | None = None,
              train_overrides: dict | None = None, resume=None, init_from=None,
              overwrite: bool = False, quiet: bool = False, command: str = "train",
              tokenizer_json: bytes | None = None, teacher=None) -> TrainResult:
    """Train a new run (or resume one) and return where it ended.

    preset_name/arch: a named size (qtf_edge.presets) and "qtf" or "dense" (default tiny,
    qtf). config_file: YAML/JSON with model:/train: overrides. model_overrides,
    train_overrides: ModelConfig / TrainConfig fields (flags), applied last; None values
    are ignored. resume: a run folder to continue; its settings must match the request.
    init_from: a run folder whose model and tokenizer a new run (out) starts from.
    tokenizer_json: a tokenizer to use instead of training one (new runs only), so that
    several runs share one. teacher: a run folder (or loaded Run) to distill from
    (train/distillation.py; TrainConfig.distill_alpha, distill_temperature).
    Raises ValueError/FileNotFoundError (bad input, nothing written), TrainingInterrupted
    (SIGINT, after a checkpoint) or TrainingDiverged.
    """
    with distributed.process_group() as ranks:  # one process: nothing to join
        session = distributed.rank0_first(ranks, lambda rank0_tokenizer: prepare_session(
            out=out, preset_name=preset_name, arch=arch, data=data, valid=valid,
            config_file=config_file, model_overrides=model_overrides,
            train_overrides=train_overrides, resume=resume, init_from=init_from,
            overwrite=overwrite, command=command, teacher=teacher,
            tokenizer_json=tokenizer_json if rank0_tokenizer is None else rank0_tokenizer))
        if ranks.active:
            distribute(session, ranks)
        try:
            return run_session(session, quiet=quiet or not ranks.is_main)
        finally:
            # The DDP wrapper (its reducer holds the process group) must be freed before
            # the group is destroyed; freed after, at exit, it can abort the process. It
            # sits in reference cycles, hence the collection.
            session.ddp = None
            gc.collect()


def distribute(session: Session, ranks: distributed.Ranks) -> None:
    """Make a prepared session one of torchrun's data-parallel workers."""
    if session.budget:
        # TT rounding replaces parameters, which the DDP wrapper cannot follow.
        raise ValueError(f"--budget: not supported under torchrun (WORLD_SIZE="
                         f"{ranks.world_size}); train a budgeted run with one process")
    if session.device.type == "cuda":
        session.device = torch.device("cuda", ranks.local_rank)
    session.ranks = ranks
    session.ddp = distributed.wrap(session.model, session.device)


def language_model_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (in float32, whatever autocast computed the logits in)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def train_step(session: Session, inputs: torch.Tensor, targets: torch.Tensor,
               lr: float) -> float | None:
    """One AdamW step; returns the loss, or None when the loss or gradient is not finite
    (then the weights, the optimizer and the router's steered thresholds are unchanged).
    Under torchrun: the loss averaged over the ranks, None if any rank's is not finite."""
    model, optimizer, config = session.model, session.optimizer, session.config
    forward = model if session.ddp is None else session.ddp
    for group in optimizer.param_groups:
        group["lr"] = lr
    # The router steers its threshold during the forward pass; a NaN batch would leave a
    # NaN threshold behind, so the buffers are put back if the step is skipped.
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if session.device.type == "cuda"
                else contextlib.nullcontext())
    optimizer.zero_grad(set_to_none=True)
    value = None
    try:
        with autocast:
            logits = forward(inputs)
            if session.teacher is not None:  # once per batch, on the same device
                with torch.no_grad():
                    teacher_logits = session.teacher(inputs)
        loss = language_model_loss(logits, targets)
        if session.teacher is not None:
            loss = distillation_loss(loss, logits, teacher_logits, config.distill_alpha,
                                     config.distill_temperature)
        value = loss.item()
    except torch.linalg.LinAlgError:
        pass  # the entropy's eigvalsh raises on NaN input where other ops return NaN
    # Every rank takes the same branch: one that skipped the backward would leave the
    # others waiting in DDP's gradient all-reduce.
    mean_loss = distributed.mean_if_all_finite(value, session.ranks)
    if mean_loss is not None:
        try:
            loss.backward()
            # With clipping off, max_norm=inf still measures the norm (grads scale by 1);
            # the gradients are all-reduced, so the norm is the same on every rank.
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                  config.grad_clip or math.inf)
            if torch.isfinite(norm):
                optimizer.step()
                if session.ranks.active:
                    distributed.sync_buffers(model)
                return mean_loss
        except torch.linalg.LinAlgError:
            pass
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    return None


# ---------------------------------------------------------------------------- checkpoints

def checkpoint(session: Session, elapsed_s: float) -> None:
    """Save weights and training state; the first save creates the run folder. Under
    torchrun only rank 0 writes (the ranks hold the same weights and state)."""
    session.state.elapsed_s = elapsed_s
    if not session.ranks.is_main:
        return
    files = {TRAIN_STATE_FILE: train_state_bytes(session.model, session.optimizer,
                                                 session.state, session.settings,
                                                 session.device)}
    if session.exists:
        save_checkpoint(session.run_dir, session.model, command=session.command,
                        extra_files=files)
    else:
        save_run(session.run_dir, session.model, session.tokenizer_json,
                 command=session.command, parent=session.parent, extra_files=files,
                 overwrite=session.overwrite)
        session.exists = True


def reload_last_checkpoint(session: Session) -> None:
    """Weights, optimizer, RNG and step of the run's last checkpoint, into the session
    (the learning-rate scale is the caller's to set)."""
    run, tensors, state, _ = load_checkpoint(session.run_dir, session.device)
    saved, current = run.model.state_dict(), session.model.state_dict()
    if all(saved[k].shape == v.shape for k, v in current.items()):
        session.model.load_state_dict(saved)
    else:  # --budget rounded TT ranks after that checkpoint: go back to its ranks
        session.model = run.model.to(session.device).train()
        session.optimizer = make_optimizer(session.model, session.config)
        session.params = count_params(session.model)
        session.estimate = estimate_on_target(session.model, session.config.target)
    apply_train_state(tensors, session.model, session.optimizer,
                      session.run_dir / TRAIN_STATE_FILE, session.device)
    session.state.step, session.state.tokens_seen = state.step, state.tokens_seen


# ---------------------------------------------------------------------------- the loop

def evaluate(session: Session, train_losses: list[float], lr: float,
             tokens_per_s: float, elapsed_s: float) -> dict:
    perplexity, traces = validation_loss(session.model, session.valid,
                                         session.config.batch_size, session.device)
    return {
        "event": "eval", "step": session.state.step,
        "train_loss": sum(train_losses) / len(train_losses) if train_losses else None,
        "val_loss": perplexity.nll_per_token,
        "val_perplexity_per_token": perplexity.perplexity_per_token,
        "val_perplexity_per_word": perplexity.perplexity_per_word,
        "val_bits_per_byte": perplexity.bits_per_byte,
        "val_tokens": perplexity.tokens,
        "learning_rate": lr, "tokens_per_s": tokens_per_s,
        "quantum_fraction": traces.quantum_fraction, "mean_entropy": traces.mean_entropy,
        "mean_tt_rank": traces.mean_tt_rank, "params": session.params,
        "tokens_seen": session.state.tokens_seen, "elapsed_s": elapsed_s,
        "estimated": session.estimate,
    }


def _log(session: Session, record: dict) -> None:
    """Append to metrics.jsonl (rank 0 only under torchrun)."""
    if session.ranks.is_main:
        append_metrics(session.run_dir, record)


def run_session(session: Session, quiet: bool = False) -> TrainResult:
    config, state, ranks = session.config, session.state, session.ranks
    tokens_per_step = (config.batch_size * session.model.config.context_length
                       * ranks.world_size)
    started, elapsed_before = time.perf_counter(), state.elapsed_s

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - started

    if not session.exists:
        checkpoint(session, elapsed())  # creates the folder: step 0 is a complete run
    progress = Progress(config.steps, state.step, quiet)
    losses, interval_time, interval_tokens, bad_in_row, record = [], 0.0, 0, 0, None
    lr = 0.0
    budget_steps = scheduled_steps(config.steps) if session.budget else ()
    try:
        with stop_on_sigint() as stop:
            while state.step < config.steps:
                lr = learning_rate(state.step, config) * state.lr_scale
                inputs, targets = random_batch(session.train_ids, config.batch_size,
                                               session.model.config.context_length,
                                               config.seed, state.step, session.device,
                                               rank=ranks.rank)
                tick = time.perf_counter()
                loss = train_step(session, inputs, targets, lr)
                interval_time += time.perf_counter() - tick
                state.step += 1
                state.tokens_seen += tokens_per_step
                interval_tokens += tokens_per_step
                tokens_per_s = interval_tokens / max(interval_time, 1e-9)
                if loss is None:
                    bad_in_row += 1
                    if bad_in_row >= config.max_bad_steps:
                        _recover(session, bad_in_row, progress)
                        bad_in_row = 0
                        continue
                else:
                    bad_in_row = 0
                    losses.append(loss)
                progress.step(state.step, loss, tokens_per_s)
                if session.budget and state.step in budget_steps:
                    enforce_budget(session, progress)

                last = state.step == config.steps
                if last or state.step % config.eval_every == 0:
                    if ranks.is_main:  # the others wait for it at the next all-reduce
                        record = evaluate(session, losses, lr, tokens_per_s, elapsed())
                        append_metrics(session.run_dir, record)
                        progress.evaluated(record)
                    losses, interval_time, interval_tokens = [], 0.0, 0
                saved = last or state.step % config.checkpoint_every == 0
                if saved:
                    checkpoint(session, elapsed())
                if distributed.any_rank(stop.requested, ranks) and not last:
                    if not saved:
                        checkpoint(session, elapsed())
                    _log(session, {"event": "interrupted", "step": state.step})
                    raise TrainingInterrupted(state.step, session.run_dir)
    finally:
        progress.close()
    return TrainResult(session.run_dir, state.step, record, session.params, state.elapsed_s,
                       final_budget_check(session) if session.budget else None)


# ---------------------------------------------------------------------------- budgets

def _seq_len(session: Session) -> int:
    return session.model.config.context_length


def enforce_budget(session: Session, progress: Progress) -> None:
    """At a scheduled step: round TT ranks until the estimate fits the budget, rebuild
    the optimizer (moments of rounded cores reset) and log a "budget_round" event."""
    rounding = fit_to_budget(session.model, session.budget, session.config.target,
                             _seq_len(session))
    if rounding is None:
        return
    session.optimizer = rebuild_optimizer(session.optimizer, session.model,
                                          lambda m: make_optimizer(m, session.config))
    session.params = count_params(session.model)
    session.estimate = estimate_on_target(session.model, session.config.target)
    append_metrics(session.run_dir, {
        "event": "budget_round", "step": session.state.step, "max_rank": rounding.max_rank,
        "before": rounding.before, "after": rounding.after,
        "rel_error": rounding.rel_error, "estimated": True,
        "profile": session.config.target, "seq_len": _seq_len(session)})
    progress.message(f"budget: TT ranks rounded to <= {rounding.max_rank} at step "
                     f"{session.state.step}: {rounding.before['params']:,} -> "
                     f"{rounding.after['params']:,} parameters, estimated "
                     f"{rounding.after['latency_ms']:.4g} ms, "
                     f"{rounding.after['energy_uj']:.4g} uJ per query on "
                     f"{session.config.target} (relative error {rounding.rel_error:.3g})")


def final_budget_check(session: Session) -> dict:
    """The last checkpoint's figures against the budget, logged as a "budget" event;
    BudgetError if it is not met."""
    figures = measure(session.model, session.config.target, _seq_len(session))
    missed = violations(session.budget, figures)
    summary = {"limits": session.budget.to_dict(), "figures": figures, "met": not missed,
               "estimated": True, "profile": session.config.target,
               "seq_len": _seq_len(session)}
    append_metrics(session.run_dir, {"event": "budget", "step": session.state.step,
                                     **summary})
    if missed:
        raise BudgetError(
            f"--budget {session.budget.spec()}: the final checkpoint does not meet it "
            f"({'; '.join(describe(k, figures[k], session.config.target) for k in missed)})")
    return summary


def _recover(session: Session, bad_steps: int, progress: Progress) -> None:
    """The NaN guard: back to the last checkpoint, with half the learning rate."""
    state = session.state
    failed_at, scale = state.step, state.lr_scale / 2
    reload_last_checkpoint(session)
    state.lr_scale = scale
    event = {"event": "nan_guard", "step": failed_at, "bad_steps": bad_steps,
             "reloaded_step": state.step, "lr_scale": scale}
    _log(session, event)
    progress.message(f"{bad_steps} non-finite steps in a row at step {failed_at}: reloaded "
                     f"the checkpoint of step {state.step}, learning rate x{scale:g}")
    if scale < MIN_LR_SCALE:
        raise TrainingDiverged(f"{session.run_dir}: the loss stays non-finite even at "
                               f"learning rate x{scale:g}; check the data and settings")
