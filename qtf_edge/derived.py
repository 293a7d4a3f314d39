"""What the passes that derive a run from another (distill, compress) share: calibration
windows, validation perplexity, healing by a short fine-tuning run, and writing the run
with its report.

A derived run is a normal run folder whose lineage names the run it came from. Its
report (JSON) is hashed into lineage.json when the pass writes the folder itself; after
healing, training has written the folder, and the report is written beside it,
atomically, like metrics.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qtf_edge.atomic import write_bytes_atomic
from qtf_edge.data import DataError, default_corpus, read_corpus
from qtf_edge.evaluate import evaluate_text, token_windows
from qtf_edge.runs import Run, load_run, save_run
from qtf_edge.tokens import token_stream

DEFAULT_CALIBRATION_TOKENS = 16384


def validation_lines(data: str | Path | None) -> list[str]:
    """--data's lines (default: the shipped validation excerpt); ValueError naming --data."""
    try:
        return read_corpus(data if data is not None else default_corpus("valid"))
    except DataError as error:
        raise ValueError(f"--data: {error}") from None


def calibration_windows(tokenizer, calib: str | Path | None, n_tokens: int,
                        context_length: int, flag: str = "--calib") -> list[list[int]]:
    """The first n_tokens ids of the calibration text (default: the shipped training
    excerpt), in windows of context_length + 1 ids as evaluation cuts them. ValueError,
    naming the file, when it is empty, unreadable or shorter than n_tokens."""
    source = default_corpus("train") if calib is None else Path(calib)
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 2:
        raise ValueError(f"{flag}-tokens must be an integer >= 2, got {n_tokens!r}")
    try:
        lines = read_corpus(source)
    except DataError as error:
        raise ValueError(f"{flag}: {error}") from None
    stream = token_stream(tokenizer, lines)
    if len(stream) < n_tokens:
        raise ValueError(f"{flag} {source}: only {len(stream):,} tokens; expected at least "
                         f"{n_tokens:,} ({flag}-tokens)")
    return token_windows(stream[:n_tokens], context_length)


def perplexity(model, tokenizer, lines: list[str], *, batch_size: int = 8,
               max_tokens: int | None = None, device: str | torch.device = "cpu") -> dict:
    """Perplexity per token and per word, bits per byte, tokens and routed share, computed
    on `device` in float32 (derived runs are compared with their source closely; the
    model is given back on the CPU)."""
    result = evaluate_text(model, tokenizer, lines, batch_size=batch_size, max_tokens=max_tokens,
                           device=device, float32=True)
    model.to("cpu")
    return {"per_token": result.perplexity.perplexity_per_token,
            "per_word": result.perplexity.perplexity_per_word,
            "bits_per_byte": result.perplexity.bits_per_byte, "tokens": result.tokens,
            "routed_fraction": result.routed_fraction}


def heal(source: Run, model, out, *, steps: int, learning_rate: float, calib, data,
         seed: int, overwrite: bool, quiet: bool, command: str, device: str = "cpu",
         distill_alpha: float = 0.0, distill_temperature: float = 1.0):
    """Fine-tune `model` (derived from `source`) on the calibration text into the run
    folder `out`, whose lineage names `source` as parent; returns the healed model. With
    distill_alpha > 0 it learns `source`'s logits too (train/distillation.py), the teacher
    running beside it on the same device."""
    from qtf_edge.train import (
        train_run,  # training pulls in much; only healing needs it
    )

    start_from = Run(path=source.path, config=model.config, model=model.train(),
                     tokenizer_path=source.tokenizer_path, lineage=source.lineage,
                     form=model.config.form)
    overrides = {"steps": steps, "learning_rate": learning_rate,
                 "min_lr": learning_rate / 10, "warmup_steps": max(1, steps // 10),
                 "eval_every": max(1, steps // 4), "checkpoint_every": steps,
                 "batch_size": 16, "seed": seed, "device": device,
                 "distill_alpha": distill_alpha, "distill_temperature": distill_temperature}
    train_run(out, data=calib, valid=data, init_from=start_from, train_overrides=overrides,
              overwrite=overwrite, quiet=quiet, command=command,
              teacher=source if distill_alpha > 0 else None)
    return load_run(out).model


def report_bytes(report: dict) -> bytes:
    return (json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def write_derived_run(out, model, source: Run, report: dict, report_file: str, *,
                      command: str, overwrite: bool, healed: bool) -> None:
    """The run folder with its report: written whole (report hashed in lineage.json), or,
    when healing already wrote the folder, the report beside it."""
    if healed:
        write_bytes_atomic(Path(out) / report_file, report_bytes(report))
    else:
        save_run(out, model, source.tokenizer_path, command=command, parent=source.path,
                 extra_files={report_file: report_bytes(report)}, overwrite=overwrite)
