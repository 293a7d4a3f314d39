"""One switch decides whether a projection is a dense nn.Linear or a TT matrix."""

from __future__ import annotations

import torch
from torch import nn

from qtf_edge.config import ModelConfig, tt_modes
from qtf_edge.tt import TTLinear


def make_linear(config: ModelConfig, in_features: int, out_features: int,
                bias: bool = True) -> nn.Module:
    if config.use_tt:
        in_modes, out_modes = tt_modes(config, in_features, out_features)
        return TTLinear(in_features, out_features, max_rank=config.tt_rank,
                        n_cores=config.tt_cores, bias=bias, in_modes=in_modes,
                        out_modes=out_modes)
    return nn.Linear(in_features, out_features, bias=bias)


def apply_linear(layer: nn.Module, x: torch.Tensor,
                 bond_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run a projection; a per-token bond mask only means something to a TT layer."""
    if bond_mask is not None and isinstance(layer, TTLinear):
        return layer(x, bond_mask=bond_mask)
    return layer(x)
