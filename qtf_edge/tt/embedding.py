"""TTEmbedding: a (num_embeddings, embedding_dim) table stored as a TT matrix.

The table is the TT matrix of a bias-free TTLinear(num_embeddings -> embedding_dim), so
storage, TT-SVD, rounding and FLOP plans are shared; this module adds the two ways an LM
uses a table: row lookup (input embedding) and x @ table.T (tied output head).
"""

from math import prod

import torch
from torch import nn

from qtf_edge.tensor_checks import check_integer_range

from .contraction import ContractionPlan, plan_contraction, tt_matmul
from .linear import TTLinear, arrange_modes


class TTEmbedding(nn.Module):
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_rank: int = 8,
        n_cores: int = 3,
        vocab_modes=None,
        dim_modes=None,
        *,
        ranks=None,
    ):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if vocab_modes is None and dim_modes is None:
            # Arranged for the tied head, x @ table.T, the costlier of the two uses.
            dim_modes, vocab_modes = arrange_modes(embedding_dim, num_embeddings, n_cores,
                                                   None if ranks is not None else max_rank)
        self.tt = TTLinear(
            num_embeddings,
            embedding_dim,
            max_rank,
            n_cores,
            bias=False,
            in_modes=vocab_modes,
            out_modes=dim_modes,
            ranks=ranks,
        )
        self._attend_plan = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Rows ~ N(0, 1) entries, like nn.Embedding."""
        self.tt.reset_parameters(std=1.0)

    @classmethod
    def from_dense(cls, table: torch.Tensor, *, ranks=None, max_rank=None, rel_tol=None, n_cores=3,
                   vocab_modes=None, dim_modes=None) -> "TTEmbedding":
        """TT-SVD of table (num_embeddings, embedding_dim); rank rules as TTLinear.from_dense."""
        if vocab_modes is None and dim_modes is None:  # the same arrangement as __init__
            dim_modes, vocab_modes = arrange_modes(table.shape[1], table.shape[0], n_cores,
                                                   None if ranks is not None else max_rank)
        tt = TTLinear.from_dense(table, ranks=ranks, max_rank=max_rank, rel_tol=rel_tol,
                                 n_cores=n_cores, in_modes=vocab_modes, out_modes=dim_modes)
        emb = cls(*table.shape, n_cores=n_cores, vocab_modes=tt.in_modes, dim_modes=tt.out_modes,
                  ranks=tt.ranks)
        emb.tt = tt
        return emb

    @property
    def vocab_modes(self) -> tuple[int, ...]:
        return self.tt.in_modes

    @property
    def dim_modes(self) -> tuple[int, ...]:
        return self.tt.out_modes

    @property
    def ranks(self) -> tuple[int, ...]:
        return self.tt.ranks

    @property
    def attend_plan(self) -> ContractionPlan:
        """Plan for x @ table.T (cores transposed to (r, n, m, r')); refreshed on rank change."""
        if self._attend_plan is None or self._attend_plan.ranks != self.ranks:
            self._attend_plan = plan_contraction(self.dim_modes, self.vocab_modes, self.ranks)
        return self._attend_plan

    def to_dense(self) -> torch.Tensor:
        """The table: (num_embeddings, embedding_dim)."""
        return self.tt.to_dense()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) integer -> (..., embedding_dim), without materialising the table.

        Each id is split into mixed-radix digits (i_0 most significant, matching the row
        order of to_dense); row = G_0[:, i_0] @ G_1[:, i_1] @ ... as a per-token chain of
        batched matmuls over (prod_{j<k} n_j, r_k) @ (r_k, n_k r_{k+1}).
        """
        check_integer_range(ids, 0, self.num_embeddings - 1, "ids")
        flat = ids.reshape(-1)
        digits = []
        for mode in reversed(self.vocab_modes):
            digits.append(flat % mode)
            flat = flat // mode
        digits.reverse()
        cores = self.tt.cores
        row = cores[0][0, digits[0]]  # (T, n_0, r_1)
        for core, digit in zip(list(cores)[1:], digits[1:]):
            r_k, _, n_k, r_next = core.shape
            # (T, r_k, n_k r_{k+1}); the gather copies only T core slices, never the table.
            slices = core.transpose(0, 1)[digit].reshape(-1, r_k, n_k * r_next)
            # shape[0], not len(): an exporter's symbolic token count must stay symbolic.
            row = torch.bmm(row.reshape(digit.shape[0], -1, r_k), slices)
        return row.reshape(*ids.shape, self.embedding_dim)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Tied LM head: x (..., embedding_dim) -> logits (..., num_embeddings) = x @ table.T."""
        if self.tt.lowering == "dense":  # fixed by export (see TTLinear.lowering)
            return x @ self.tt.dense_weight().t()
        transposed = [core.transpose(1, 2) for core in self.tt.cores]
        return tt_matmul(x, transposed, self.attend_plan,
                         dense_weight=lambda: self.tt.dense_weight().t(),
                         allow_dense=self.tt.lowering != "tt")

    def flops_lookup(self, n_tokens: int) -> int:
        """FLOPs of forward() over n_tokens ids (the per-token chain, 2 per multiply-add)."""
        n, r = self.dim_modes, self.ranks
        per_token = sum(2 * prod(n[:k]) * r[k] * n[k] * r[k + 1] for k in range(1, len(n)))
        return n_tokens * per_token

    def flops_attend(self, n_tokens: int) -> int:
        """FLOPs of attend() over n_tokens vectors (by the path a fixed lowering takes)."""
        if self.tt.lowering == "dense":
            return 2 * n_tokens * self.num_embeddings * self.embedding_dim
        if self.tt.lowering == "tt":
            return n_tokens * self.attend_plan.flops_per_token
        return self.attend_plan.flops(n_tokens)

    @torch.no_grad()
    def round_(self, max_rank: int | None = None, rel_tol: float | None = None) -> float:
        """TT rounding of the table in place (see TTLinear.round_); returns relative error."""
        return self.tt.round_(max_rank=max_rank, rel_tol=rel_tol)

    def extra_repr(self) -> str:
        return (
            f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, "
            f"vocab_modes={self.vocab_modes}, dim_modes={self.dim_modes}, ranks={self.ranks}"
        )
