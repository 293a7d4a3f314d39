"""Validation loss during training, from the cached token stream of the validation text.

The stream is read as training reads text (each line's ids, then `<|endoftext|>`) and
cut as qtf_edge.evaluate cuts it: non-overlapping windows of context_length + 1 ids,
starting context_length apart, so every token after the first is predicted once and the
summed loss is a property of the text (what per-word perplexity and bits per byte
divide by). To keep an evaluation short, only the first whole lines that fit in
eval_tokens are used, and words and bytes are counted on exactly those lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qtf_edge.data import TextPerplexity, count_words_and_bytes
from qtf_edge.evaluate import TraceSummary, token_windows, windows_loss


@dataclass(frozen=True)
class ValidationSet:
    ids: np.ndarray  # the token stream of `lines` lines, each ending in <|endoftext|>
    lines: int
    words: int
    bytes: int


def validation_set(stream: np.ndarray, lines: list[str], end_of_text: int,
                   max_tokens: int) -> ValidationSet:
    """The first whole lines of `stream` (the encoded `lines`) within max_tokens ids
    (0: all; at least one line, however long)."""
    ends = np.flatnonzero(np.asarray(stream) == end_of_text) + 1  # stream offset after line i
    if len(ends) != len(lines):
        raise ValueError(f"token stream has {len(ends)} line ends for {len(lines)} lines")
    n_lines = len(lines) if max_tokens == 0 else max(1, int(np.searchsorted(
        ends, max_tokens, side="right")))
    words, size = count_words_and_bytes(lines[:n_lines])
    return ValidationSet(np.asarray(stream[:ends[n_lines - 1]]), n_lines, words, size)


def validation_loss(model, vset: ValidationSet, batch_size: int,
                    device: torch.device) -> tuple[TextPerplexity, TraceSummary]:
    """Total loss of the model on vset, with its routing/entropy/rank summary."""
    windows = token_windows(vset.ids, model.config.context_length)
    nll, summary = windows_loss(model, windows, batch_size=batch_size, device=device)
    tokens = sum(len(w) - 1 for w in windows)
    return TextPerplexity(nll=nll, tokens=tokens, words=vset.words, bytes=vset.bytes), summary
