"""Checks on tensor VALUES (not shapes) at module boundaries.

Reading a tensor's values is a host sync and, while torch.export or torch.compile traces,
a data-dependent branch that cannot be put into a graph. So value checks run in eager
mode only; a traced graph (an exported model) takes the same inputs unchecked, and the
runtime that runs it validates its own inputs.
"""

from __future__ import annotations

import torch


def check_integer_range(values: torch.Tensor, low: int, high: int, name: str) -> None:
    """ValueError unless values is an integer tensor with every entry in [low, high]."""
    if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {values.dtype}")
    if torch.compiler.is_compiling() or not values.numel():
        return
    smallest, largest = int(values.min()), int(values.max())
    if smallest < low or largest > high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got values in [{smallest}, {largest}]")
