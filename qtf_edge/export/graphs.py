"""The model as two graphs with its KV cache as plain tensors: prefill and decode.

An exported graph cannot hold the model's KVCache object, so these wrappers take and give
the cache as tensors and build the KVCache inside forward; the model itself is unchanged.
Per layer the cache is keys and values (B, n_heads, S, head_dim), and, where the layer
has QKSAM, the key circuits' states (B, n_heads, S, 2**n_qubits) ("key_state").

Names (a contract with the on-device runner, which feeds every output `present.X` back as
the input `past_key_values.X` of the next decode step):

    prefill: input_ids                                  -> logits, present.{i}.{part}
    decode:  input_ids, past_key_values.{i}.{part} ...  -> logits, present.{i}.{part}

with {i}.{part} running over `cache_names(config)`.
"""

from __future__ import annotations

import torch
from torch import nn

from qtf_edge.config import ModelConfig
from qtf_edge.model import QTensorFormer
from qtf_edge.model.kv_cache import KVCache, LayerCache

PARTS = ("key", "value", "key_state")  # LayerCache's keys, values, key_states, in this order


def layer_parts(config: ModelConfig) -> tuple[str, ...]:
    """The cache tensors each layer keeps: key_state only where attention has QKSAM."""
    return PARTS if config.use_qksam else PARTS[:2]


def cache_names(config: ModelConfig) -> list[str]:
    """Cache suffixes in graph order, e.g. ["0.key", "0.value", "0.key_state", "1.key", ...]."""
    return [f"{i}.{part}" for i in range(config.n_layers) for part in layer_parts(config)]


def input_names(config: ModelConfig, decode: bool) -> list[str]:
    past = [f"past_key_values.{name}" for name in cache_names(config)] if decode else []
    return ["input_ids", *past]


def output_names(config: ModelConfig) -> list[str]:
    return ["logits", *(f"present.{name}" for name in cache_names(config))]


def cache_tensors(cache: KVCache, config: ModelConfig) -> list[torch.Tensor]:
    """The cache's tensors in `cache_names` order."""
    fields = {"key": "keys", "value": "values", "key_state": "key_states"}
    return [getattr(layer, fields[part]) for layer in cache.layers
            for part in layer_parts(config)]


def cache_from_tensors(tensors, config: ModelConfig) -> KVCache:
    """A KVCache holding tensors given in `cache_names` order."""
    per_layer = len(layer_parts(config))
    if len(tensors) != per_layer * config.n_layers:
        raise ValueError(f"expected {per_layer * config.n_layers} cache tensors "
                         f"({', '.join(cache_names(config))}), got {len(tensors)}")
    return KVCache([LayerCache(*tensors[i:i + per_layer])
                    for i in range(0, len(tensors), per_layer)])


class PrefillGraph(nn.Module):
    """input_ids (B, T) int64 -> (logits (B, T, V), *presents), each present (B, H, T, .)."""

    def __init__(self, model: QTensorFormer):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = self.model.new_cache()
        logits = self.model(input_ids, cache)
        return (logits, *cache_tensors(cache, self.model.config))


class DecodeGraph(nn.Module):
    """(input_ids (B, T) int64, *pasts (B, H, P, .)) -> (logits (B, T, V), *presents),
    each present (B, H, P + T, .): the past with the new tokens' entries appended. The new
    tokens take positions P .. P + T - 1."""

    def __init__(self, model: QTensorFormer):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *pasts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = cache_from_tensors(pasts, self.model.config)
        logits = self.model(input_ids, cache)
        return (logits, *cache_tensors(cache, self.model.config))
