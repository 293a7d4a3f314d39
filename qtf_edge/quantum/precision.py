"""Simulations run in float32, also inside a bf16/fp16 autocast region.

Why: amplitudes in bf16 (8 bits of mantissa) lose the state's norm within a few gates,
so entropies and fidelities stop meaning anything, and CUDA has no bf16 eigh at all.
The simulated parts are a small share of the FLOPs, so full precision costs little.
"""

from __future__ import annotations

import functools

import torch


def float32_simulation(method):
    """Decorate a module method: autocast off, floating tensor arguments cast to float32."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        if not torch.is_autocast_enabled(device_type):
            return method(self, *args, **kwargs)
        args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in args)
        with torch.autocast(device_type=device_type, enabled=False):
            return method(self, *args, **kwargs)

    return wrapper
