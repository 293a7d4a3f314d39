"""Causal self-attention: classical multi-head attention, optionally mixed per token with QKSAM.

Both paths share the value and output projections. A routed token (gate 1) takes its
attention row from QKSAM, the others from scaled dot-product attention. Mixing the
outputs, y_t = g_t * (A_q V)_t + (1 - g_t) * (A_c V)_t, equals mixing the rows of the two
attention matrices, and lets the classical path use the fused SDPA kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qtf_edge.config import ModelConfig
from qtf_edge.model.kv_cache import LayerCache
from qtf_edge.model.linear import make_linear
from qtf_edge.model.qksam import QuantumKernelAttention


def causal_mask(n_new: int, n_total: int, device) -> torch.Tensor | None:
    """(n_new, n_total) bool mask, True where a new query may see a key (the new tokens are
    the last n_new of n_total); None for a single new token, which sees everything."""
    if n_new == 1:
        return None
    rows = torch.arange(n_new, device=device)[:, None] + (n_total - n_new)
    return torch.arange(n_total, device=device)[None, :] <= rows


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.qkv = make_linear(config, config.d_model, 3 * config.d_model)
        self.proj = make_linear(config, config.d_model, config.d_model)
        self.qksam = QuantumKernelAttention(config) if config.use_qksam else None
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """x (B, T, d); gate (B, T) routes each token to QKSAM (1) or classical (0);
        with QKSAM on and no gate, every token takes QKSAM."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query_states = key_states = None
        if self.qksam is not None:
            query_states, key_states = self.qksam.states(x)
        if cache is not None:
            k, v, key_states = cache.extend(k, v, key_states)

        n_total = k.shape[2]
        mask = causal_mask(T, n_total, x.device)
        p_drop = self.dropout if self.training else 0.0
        y = None
        if self.qksam is None or gate is not None:
            fused_causal = n_total == T  # no cached prefix: SDPA's own causal flag is exact
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if fused_causal else mask, dropout_p=p_drop,
                is_causal=bool(fused_causal and T > 1))  # bool: an exporter's symbolic T
        if self.qksam is not None:
            weights = self.qksam.attention(query_states, key_states, mask)
            y_quantum = F.dropout(weights, p_drop, self.training) @ v
            if gate is not None:
                # g * quantum + (1 - g) * classical: exact for the hard 0/1 gate, with lerp's
                # gradients; torch.lerp itself has no TFLite lowering (prims.copy_strided).
                g = gate[:, None, :, None].to(y.dtype)
                y = g * y_quantum.to(y.dtype) + (1 - g) * y
            else:
                y = y_quantum
        return self.proj(y.transpose(1, 2).reshape(B, T, C))
