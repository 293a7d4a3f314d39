"""What a model's DARUAN activations see on calibration text."""

from __future__ import annotations

import torch
from torch import nn

from qtf_edge.evaluate import window_batches
from qtf_edge.quantum import DARUAN


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
