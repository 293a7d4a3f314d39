"""QTensorFormer: a GPT-style LM whose parts are switched by ModelConfig.

With every switch on: TT embeddings and projections, a simulated quantum encoder per
block, entropy-routed QKSAM attention, adaptive TT ranks and DARUAN activations. With
every switch off (ModelConfig.dense_baseline()): a plain dense GPT, built by this code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from qtf_edge.config import ModelConfig, tt_modes
from qtf_edge.model.block import Block, TokenTrace
from qtf_edge.model.encoder import QuantumTokenEncoder
from qtf_edge.model.kv_cache import KVCache
from qtf_edge.model.low_rank import LowRankEmbedding, factorize_layers
from qtf_edge.model.qksam import QuantumKernelAttention
from qtf_edge.quant import QuantizedEmbedding, quantize_layers
from qtf_edge.tt import TTEmbedding, TTLinear


INIT_STD = 0.02


class QTensorFormer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        if config.tt_embeddings:
            vocab_modes, dim_modes = tt_modes(config, config.vocab_size, config.d_model)
            self.token_embedding = TTEmbedding(config.vocab_size, config.d_model,
                                               max_rank=config.tt_embedding_rank,
                                               n_cores=config.tt_cores, vocab_modes=vocab_modes,
                                               dim_modes=dim_modes)
        else:
            self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.context_length, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_final = nn.LayerNorm(config.d_model)
        self.head = None
        if not config.tie_embeddings:
            in_modes, out_modes = tt_modes(config, config.d_model, config.vocab_size)
            self.head = (TTLinear(config.d_model, config.vocab_size, bias=False,
                                  max_rank=config.tt_embedding_rank, n_cores=config.tt_cores,
                                  in_modes=in_modes, out_modes=out_modes)
                         if config.tt_embeddings else
                         nn.Linear(config.d_model, config.vocab_size, bias=False))
        factorize_layers(self, config.low_rank)
        self.apply(self._init_weights)
        quantize_layers(self, config.weight_bits, config.weight_block, config.weight_blocks)

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2 initialisation, N(0, 0.02) entries, for dense and TT weights alike, so that
        # QTF and its dense baseline start from the same scale (a TT table with N(0, 1)
        # entries, as nn.Embedding's default, would start the tied head's logits at ~sqrt(d)).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, TTLinear):
            module.reset_parameters(std=INIT_STD)
        # Angle projections need O(1) radians, not 0.02-scale ones, or every token starts
        # in nearly the same state (entropy ~0 for all). apply() visits children first.
        if isinstance(module, (QuantumTokenEncoder, QuantumKernelAttention)):
            nn.init.normal_(module.to_angles.weight, std=1.0 / math.sqrt(self.config.d_model))

    def new_cache(self) -> KVCache:
        return KVCache.empty(self.config.n_layers)

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, vocab). With a cache, ids are the tokens after the
        cached ones and the cache is extended in place."""
        start = 0 if cache is None else cache.length
        T = ids.shape[1]
        if start + T > self.config.context_length:
            raise ValueError(f"sequence of {start + T} tokens exceeds context_length="
                             f"{self.config.context_length}")
        positions = torch.arange(start, start + T, device=ids.device)
        x = self.dropout(self.token_embedding(ids) + self.position_embedding(positions))
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i])
        return self._logits(self.ln_final(x))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            return self.head(x)
        if isinstance(self.token_embedding, (TTEmbedding, QuantizedEmbedding, LowRankEmbedding)):
            return self.token_embedding.attend(x)
        return F.linear(x, self.token_embedding.weight)

    def token_traces(self) -> list[TokenTrace]:
        """Per block: entropy, route and rank of each token in the last forward pass."""
        return [block.trace for block in self.blocks if block.trace is not None]

    def routed_fraction(self) -> float | None:
        """Mean share of tokens that took QKSAM in the last forward pass, over blocks."""
        fractions = [b.router.routed_fraction for b in self.blocks if b.router is not None]
        return float(torch.stack(fractions).mean()) if fractions else None
