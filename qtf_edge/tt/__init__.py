"""Tensor-train (TT) matrices: factorised linear layers and embeddings."""

from .contraction import ContractionPlan, interval_orders, plan_contraction, rank_to_mask, tt_matmul, tt_to_dense
from .embedding import TTEmbedding
from .factorize import factorize_dim
from .linear import TTLinear, full_ranks

__all__ = [
    "ContractionPlan",
    "TTEmbedding",
    "TTLinear",
    "factorize_dim",
    "full_ranks",
    "interval_orders",
    "plan_contraction",
    "rank_to_mask",
    "tt_matmul",
    "tt_to_dense",
]
