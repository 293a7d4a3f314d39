"""Selective router: hard tokens (high entanglement entropy) go to quantum-kernel attention.

Forward pass: a hard 0/1 gate g_t = [h_t > theta]. Backward pass: the gradient of
sigmoid((h_t - theta) / tau) (straight-through estimator), so the encoder still learns
which tokens to call hard. theta is either a learned parameter or steered, during
training, to the (1 - quantum_fraction) quantile of the batch's hardness by an
exponential moving average, so that about quantum_fraction of tokens take the quantum
path; at inference it is fixed.
"""

from __future__ import annotations

import torch
from torch import nn

from qtf_edge.config import ModelConfig

THRESHOLD_MOMENTUM = 0.1  # EMA step of the steered threshold: smooths per-batch quantiles


class SelectiveRouter(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.target_fraction = config.quantum_fraction
        self.temperature = config.router_temperature
        self.learned = config.router_threshold == "learned"
        start = torch.tensor(1.0 - config.quantum_fraction)
        if self.learned:
            self.threshold = nn.Parameter(start)
        else:
            self.register_buffer("threshold", start)
        self.register_buffer("routed_fraction", torch.tensor(0.0), persistent=False)

    def forward(self, hardness: torch.Tensor) -> torch.Tensor:
        """hardness (B, T) in [0, 1] -> gate (B, T): values 0/1, straight-through gradient."""
        if self.training and not self.learned:
            self._steer(hardness.detach())
        soft = torch.sigmoid((hardness - self.threshold) / self.temperature)
        hard = (hardness > self.threshold).to(hardness.dtype)
        self.routed_fraction = hard.detach().mean()
        return hard + (soft - soft.detach())  # exactly 0/1 forward, sigmoid grad backward

    @torch.no_grad()
    def _steer(self, hardness: torch.Tensor) -> None:
        quantile = torch.quantile(hardness.float().flatten(), 1.0 - self.target_fraction)
        self.threshold.lerp_(quantile.to(self.threshold.dtype), THRESHOLD_MOMENTUM)
