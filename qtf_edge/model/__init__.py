"""Q-TensorFormer model code: one module per idea, nanoGPT-style."""

from qtf_edge.model.block import Block, TokenTrace
from qtf_edge.model.kv_cache import KVCache, LayerCache
from qtf_edge.model.qtensorformer import QTensorFormer

__all__ = ["Block", "KVCache", "LayerCache", "QTensorFormer", "TokenTrace"]
