"""One transformer block: quantum encoder -> router -> attention -> adaptive-rank FFN."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qtf_edge.config import ModelConfig
from qtf_edge.model.attention import CausalSelfAttention
from qtf_edge.model.encoder import QuantumTokenEncoder
from qtf_edge.model.ffn import FeedForward, adaptive_ranks
from qtf_edge.model.kv_cache import LayerCache
from qtf_edge.model.router import SelectiveRouter


@dataclass
class TokenTrace:
    """What a block decided for each token of its last forward pass (detached)."""
    entropy: torch.Tensor              # (B, T) von Neumann entropy in nats
    routed: torch.Tensor | None        # (B, T) 1.0 where the token took QKSAM
    rank: torch.Tensor | None          # (B, T) TT rank the FFN used


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = None
        if config.use_quantum_encoder:
            self.ln_encoder = nn.LayerNorm(config.d_model)
            self.encoder = QuantumTokenEncoder(config)
        self.router = SelectiveRouter(config) if config.use_router else None
        self.ln_attention = nn.LayerNorm(config.d_model)
        self.attention = CausalSelfAttention(config)
        self.ln_ffn = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config)
        self.trace: TokenTrace | None = None

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        gate = ranks = None
        if self.encoder is not None:
            features, entropy = self.encoder(self.ln_encoder(x))
            x = x + features
            if self.router is not None:
                gate = self.router(self.encoder.hardness(entropy))
            if self.config.adaptive_rank:
                ranks = adaptive_ranks(entropy.detach(), self.encoder.max_entropy,
                                       self.config.r_min, self.config.r_max)
            self.trace = TokenTrace(entropy.detach(), None if gate is None else gate.detach(),
                                    ranks)
        x = x + self.attention(self.ln_attention(x), gate, cache)
        return x + self.ffn(self.ln_ffn(x), ranks)
