"""Calibration text as model inputs, and what the model's activations see on it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from qtf_edge.data import DataError, default_corpus, read_corpus
from qtf_edge.evaluate import token_windows, window_batches
from qtf_edge.quantum import DARUAN
from qtf_edge.tokens import encode_lines

DEFAULT_CALIBRATION_TOKENS = 16384


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
    stream = [t for ids in encode_lines(tokenizer, lines) for t in ids]
    if len(stream) < n_tokens:
        raise ValueError(f"{flag} {source}: only {len(stream):,} tokens; expected at least "
                         f"{n_tokens:,} ({flag}-tokens)")
    return token_windows(stream[:n_tokens], context_length)


@torch.inference_mode()
def daruan_input_ranges(model: nn.Module, windows: list[list[int]], batch_size: int = 8
                        ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{DARUAN module name: (min (C,), max (C,))} of each channel's input over the windows."""
    ranges: dict[str, list[torch.Tensor]] = {}

    def record(name):
        def hook(module, inputs):
            x = inputs[0].detach().float().flatten(0, -2)
            low, high = x.amin(0), x.amax(0)
            if name in ranges:
                low, high = torch.minimum(ranges[name][0], low), torch.maximum(ranges[name][1], high)
            ranges[name] = [low, high]
        return hook

    handles = [module.register_forward_pre_hook(record(name))
               for name, module in model.named_modules() if isinstance(module, DARUAN)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for ids in window_batches(windows, batch_size, device):
            model(ids[:, :-1])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: (low, high) for name, (low, high) in ranges.items()}
