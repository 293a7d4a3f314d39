"""Layers whose weights are used block-quantised, and the bytes a model ships.

A model config's `weight_bits` ({layer path: 4 or 8}) names the layers; `quantize_layers`
swaps each nn.Linear / nn.Embedding for its quantised subclass, which keeps the float
weight (the same state-dict names, so runs and optimizers see no difference) and computes
with its rounded form (blockwise.py): training and healing learn weights that survive the
rounding (straight-through), and export writes the same integer codes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from qtf_edge.module_paths import replace_module
from qtf_edge.quant.blockwise import DEFAULT_BLOCK, MIN_BLOCK, WeightQuant, block_size

FLOAT_BYTES = 4


class QuantizedLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 bits: int, block: int = DEFAULT_BLOCK):
        super().__init__(in_features, out_features, bias)
        self.quant = WeightQuant(bits, block_size(bits, block, in_features))

    def quantized_weight(self) -> torch.Tensor:
        return self.quant.fake_quantize(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


class QuantizedEmbedding(nn.Embedding):
    """Rows quantised along the embedding dimension: the layout GatherBlockQuantized reads
    and, for a tied head, the one MatMulNBits reads (K = embedding_dim), so one table
    serves both."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, bits: int,
                 block: int = DEFAULT_BLOCK):
        super().__init__(num_embeddings, embedding_dim)
        self.quant = WeightQuant(bits, table_block(bits, block, embedding_dim))

    def quantized_weight(self) -> torch.Tensor:
        return self.quant.fake_quantize(self.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.quantized_weight())

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The tied LM head: x @ table^T."""
        return F.linear(x, self.quantized_weight())


QUANTIZED = (QuantizedLinear, QuantizedEmbedding)


def table_block(bits: int, block: int, embedding_dim: int) -> int:
    """A table's block must divide its rows: GatherBlockQuantized reads a row's length off
    its codes, so a padded block would return padded rows. The largest power of two that
    block_size allows and embedding_dim is a multiple of (quantizable_layers admits only
    tables whose rows are a multiple of MIN_BLOCK)."""
    size = block_size(bits, block, embedding_dim)
    while embedding_dim % size:
        size //= 2
    return size


def _quantizable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return module.in_features >= MIN_BLOCK
    return isinstance(module, nn.Embedding) and module.embedding_dim % MIN_BLOCK == 0


def quantizable_layers(model: nn.Module) -> list[str]:
    """Paths of the layers weight-only quantisation applies to: every nn.Linear with at
    least MIN_BLOCK inputs (the runtime's smallest block) and every nn.Embedding whose rows
    are a multiple of MIN_BLOCK (see table_block)."""
    return [name for name, m in model.named_modules() if _quantizable(m)]


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZED)}


def quantized(module: nn.Module, bits: int, block: int) -> nn.Module:
    """The quantised form of an nn.Linear / nn.Embedding, sharing its parameters."""
    if isinstance(module, nn.Linear):
        new = QuantizedLinear(module.in_features, module.out_features,
                              module.bias is not None, bits=bits, block=block)
    else:
        new = QuantizedEmbedding(module.num_embeddings, module.embedding_dim, bits=bits,
                                 block=block)
    new.weight, new.bias = module.weight, getattr(module, "bias", None)
    return new


def quantize_layers(model: nn.Module, bits: dict[str, int], block: int = DEFAULT_BLOCK,
                    blocks: dict[str, int] | None = None) -> nn.Module:
    """Swap the named layers for their quantised forms (in place; returns the model), int4
    in blocks of `block` inputs or, per layer, `blocks`'. ValueError naming a path that is
    not one of quantizable_layers(model)."""
    blocks = blocks or {}
    allowed = quantizable_layers(model)
    for name, layer_bits in bits.items():
        if name not in allowed:
            raise ValueError(f"config field 'weight_bits' names {name!r}, which is not a "
                             f"quantisable layer of this model (expected one of: "
                             f"{', '.join(allowed)})")
        replace_module(model, name, quantized(model.get_submodule(name), layer_bits,
                                              blocks.get(name, block)))
    return model


@torch.no_grad()
def dequantized_copy(model: nn.Module) -> nn.Module:
    """A copy with plain layers holding the rounded weights: the same function, no rounding
    ops (what export traces; rounding again gives the same codes)."""
    copied = copy.deepcopy(model)
    for name, layer in quantized_layers(copied).items():
        plain = (nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
                 if isinstance(layer, nn.Linear)
                 else nn.Embedding(layer.num_embeddings, layer.embedding_dim))
        plain.weight = nn.Parameter(layer.quant.dequantize(layer.weight))
        if getattr(layer, "bias", None) is not None:
            plain.bias = layer.bias
        replace_module(copied, name, plain)
    return copied


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights as they ship: float32 for every parameter, except the weights of
    quantised layers, which ship as codes and scales. A tied table counts once."""
    quantized = quantized_layers(model).values()
    rounded = {id(m.weight) for m in quantized}
    floats = sum(p.numel() for p in model.parameters() if id(p) not in rounded)
    return FLOAT_BYTES * floats + sum(m.quant.nbytes(*m.weight.shape) for m in quantized)
