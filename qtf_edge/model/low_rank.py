"""Low-rank factors as plain layers: W = B A computed as two nn.Linear (or a narrow table
and a projection), so that weight-only quantisation rounds each factor and ONNX Runtime
runs both as MatMulNBits.

A model config's `low_rank` ({layer path: rank}) names the layers; `factorize_layers`
swaps each for its factored form before any quantisation (quant/layers.py), which then
addresses the factors by their own paths ("blocks.0.ffn.up.project"). `qtf-edge compress`
writes both fields. (A TT matrix in the "low_rank" layout holds the same product, but its
chain is traced as core @ state, which MatMulNBits, a constant on the right, cannot run.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qtf_edge.module_paths import replace_module


class LowRankLinear(nn.Module):
    """x @ A^T @ B^T (+ bias): in -> rank -> out."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.project = nn.Linear(in_features, rank, bias=False)
        self.expand = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.project(x))


class LowRankEmbedding(nn.Module):
    """A (vocab, rank) table times a (rank, dim) projection. The projection is a plain
    parameter, never quantised: a tied head reads it transposed, and MatMulNBits's blocks
    run along one axis only; at rank x dim floats it is small beside the table."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.table = nn.Embedding(num_embeddings, rank)
        self.expand = nn.Parameter(torch.empty(rank, embedding_dim))
        nn.init.normal_(self.expand, std=rank ** -0.5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids) @ self.expand

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The tied LM head: x @ (table @ expand)^T, without the full table."""
        # expand @ x^T, transposed back, not x @ expand^T: an exporter folds the latter's
        # transpose into a second copy of the constant; this keeps one.
        narrow = (self.expand @ x.transpose(-1, -2)).transpose(-1, -2)
        if hasattr(self.table, "attend"):  # a quantised table computes with its codes
            return self.table.attend(narrow)
        return F.linear(narrow, self.table.weight)


def factorable(module: nn.Module) -> bool:
    return type(module) in (nn.Linear, nn.Embedding)


def factored(module: nn.Module, rank: int) -> nn.Module:
    """The factored layer of `module`'s shape (uninitialised factors; compress fills them)."""
    if isinstance(module, nn.Embedding):
        return LowRankEmbedding(module.num_embeddings, module.embedding_dim, rank)
    return LowRankLinear(module.in_features, module.out_features, rank,
                         module.bias is not None)


def factorize_layers(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Swap the named nn.Linear / nn.Embedding layers for factored ones of the given ranks
    (in place; returns the model). ValueError naming a path that cannot be factored."""
    for name, rank in ranks.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        if module is None or not factorable(module):
            raise ValueError(f"config field 'low_rank' names {name!r}, which is not an "
                             f"nn.Linear or nn.Embedding of this model")
        replace_module(model, name, factored(module, rank))
    return model
