"""Training batches: random windows of context_length + 1 tokens from the token stream.

The windows of step s depend only on (seed, s): each step seeds its own generator, so a
resumed run draws exactly the batches an uninterrupted one would, with no sampler state
to save. Under torchrun, rank r > 0 seeds with (seed, s, r); rank 0 draws the
single-process batch.
"""

from __future__ import annotations

import numpy as np
import torch


def batch_starts(n_tokens: int, window: int, batch_size: int, seed: int, step: int,
                 rank: int = 0) -> np.ndarray:
    """Start offsets (batch_size,) of windows of `window` tokens in a stream of n_tokens."""
    if n_tokens < window:
        raise ValueError(f"token stream of {n_tokens} tokens is shorter than one window "
                         f"of {window}")
    # SeedSequence([seed, step]) mixes both into a well-spread state: (seed, step) pairs
    # never alias the way seed + step would.
    rng = np.random.default_rng(np.random.SeedSequence([seed, step, rank] if rank else
                                                       [seed, step]))
    return rng.integers(0, n_tokens - window + 1, size=batch_size)


def random_batch(ids: np.ndarray, batch_size: int, context_length: int, seed: int, step: int,
                 device: torch.device | str = "cpu", rank: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (batch_size, context_length) int64 on `device`; targets are
    the inputs shifted by one token."""
    window = context_length + 1
    starts = batch_starts(len(ids), window, batch_size, seed, step, rank)
    rows = np.asarray(ids[starts[:, None] + np.arange(window)], dtype=np.int64)
    tokens = torch.from_numpy(rows).to(device)
    return tokens[:, :-1], tokens[:, 1:]
