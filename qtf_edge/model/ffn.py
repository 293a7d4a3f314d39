"""Feed-forward block: TT (or dense) up/down projections around DARUAN (or GELU, or in the
deploy form the B-spline fitted to each DARUAN channel).

With adaptive rank on, each token uses only the first r_t channels of every TT bond,
r_t = r_min + round(a * S_t) clipped to [r_min, r_max], a = (r_max - r_min) / S_max:
tokens whose encoder state is more entangled get more capacity.
"""

from __future__ import annotations

import torch
from torch import nn

from qtf_edge.config import ModelConfig
from qtf_edge.kan import BSplineActivation
from qtf_edge.model.linear import apply_linear, make_linear
from qtf_edge.quantum import DARUAN
from qtf_edge.tt import rank_to_mask


def adaptive_ranks(entropy: torch.Tensor, max_entropy: float, r_min: int,
                   r_max: int) -> torch.Tensor:
    """entropy (...) in nats -> per-token rank (...) as integers in [r_min, r_max]."""
    slope = (r_max - r_min) / max_entropy
    return (r_min + torch.round(slope * entropy)).clamp(r_min, r_max).long()


def make_activation(config: ModelConfig) -> nn.Module:
    """DARUAN (simulated form), its fitted B-spline KAN (deploy form), or GELU."""
    if not config.use_qkan:
        return nn.GELU()
    if config.form == "deploy":
        return BSplineActivation(config.d_ff, config.spline_grid, config.spline_order)
    return DARUAN(config.d_ff, config.daruan_reps)


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.max_rank = config.tt_rank
        self.up = make_linear(config, config.d_model, config.d_ff)
        self.activation = make_activation(config)
        self.down = make_linear(config, config.d_ff, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, ranks: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d); ranks (B, T) per-token TT rank, or None for the full rank."""
        mask = None if ranks is None else rank_to_mask(ranks, self.max_rank).to(x.dtype)
        hidden = self.activation(apply_linear(self.up, x, mask))
        return self.dropout(apply_linear(self.down, hidden, mask))
