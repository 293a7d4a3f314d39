"""TTLinear: a linear layer whose (in, out) weight is stored as a tensor-train matrix.

Weight convention: W has shape (in_features, out_features) and y = x @ W + bias, i.e. W is
the transpose of nn.Linear.weight. Core k has shape (r_k, m_k, n_k, r_{k+1}) where
in_features = prod m_k, out_features = prod n_k and r_0 = r_K = 1.
"""

import math

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import tensor_train
from torch import nn

from qtf_edge.param_cache import ParameterCache

from .contraction import ContractionPlan, plan_contraction, tt_matmul, tt_to_dense
from .factorize import factorize_dim


def resolve_modes(features: int, n_cores: int, modes, name: str) -> tuple[int, ...]:
    """Given modes (checked) or a balanced factorisation of `features` into n_cores modes."""
    if modes is None:
        return factorize_dim(features, n_cores)
    modes = tuple(int(d) for d in modes)
    if math.prod(modes) != features or min(modes) < 1:
        raise ValueError(f"{name} must be positive and multiply to {features}, got {modes}")
    return modes


def arrange_modes(in_features: int, out_features: int, n_cores: int,
                  max_rank: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Balanced factorisations of both sides, each read ascending or descending, whichever
    pair needs the fewest chain FLOPs per token at min(max_rank, full rank) per bond.

    Why: the order of modes changes the chain's cost a lot. With two cores, contracting
    core 0 first costs 2 r m_1 n_0 (m_0 + n_1) per token, so a large first input mode and a
    small first output mode (small modes beside the bond) can be ~1.7x cheaper than both
    ascending. Ties keep the first candidate (both ascending).
    """
    ascending_in, ascending_out = factorize_dim(in_features, n_cores), factorize_dim(out_features, n_cores)
    candidates = [(i, o) for i in (ascending_in, ascending_in[::-1])
                  for o in (ascending_out, ascending_out[::-1])]

    def chain_flops(pair):
        ranks = full_ranks(*pair) if max_rank is None else resolve_ranks(*pair, max_rank=max_rank)
        return plan_contraction(*pair, ranks).flops_per_token

    return min(candidates, key=chain_flops)


def _modes(in_features, out_features, n_cores, in_modes, out_modes, max_rank):
    """Given modes (checked), or the cheapest arrangement when neither side is given."""
    if in_modes is None and out_modes is None:
        return arrange_modes(in_features, out_features, n_cores, max_rank)
    return (resolve_modes(in_features, n_cores, in_modes, "in_modes"),
            resolve_modes(out_features, n_cores, out_modes, "out_modes"))


def full_ranks(in_modes, out_modes) -> tuple[int, ...]:
    """Largest useful rank per bond: bond k splits W into rows (m_j n_j, j < k) and columns
    (m_j n_j, j >= k), and no rank above that unfolding's smaller side adds anything."""
    sizes = [m * n for m, n in zip(in_modes, out_modes)]
    return tuple(min(math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(len(sizes) + 1))


def resolve_ranks(in_modes, out_modes, ranks=None, max_rank=None) -> tuple[int, ...]:
    """Explicit ranks (checked against the full ranks) or min(max_rank, full rank) per bond."""
    full = full_ranks(in_modes, out_modes)
    if ranks is None:
        if max_rank is None or max_rank < 1:
            raise ValueError(f"max_rank must be an integer >= 1, got {max_rank}")
        return tuple(min(max_rank, f) for f in full)
    ranks = tuple(int(r) for r in ranks)
    if len(ranks) != len(full) or ranks[0] != 1 or ranks[-1] != 1:
        raise ValueError(f"ranks must have length {len(full)} and start and end with 1, got {ranks}")
    for k, (r, f) in enumerate(zip(ranks, full)):
        if not 1 <= r <= f:
            raise ValueError(f"ranks[{k}] (bond {k}) must be in [1, {f}] (its full rank), got {r}")
    return ranks


def interleaved_tensor(weight: np.ndarray, in_modes, out_modes) -> np.ndarray:
    """(in, out) -> (m_0 n_0, m_1 n_1, ...): the tensor whose plain TT is our TT matrix."""
    K = len(in_modes)
    t = weight.reshape(*in_modes, *out_modes)
    t = t.transpose([axis for k in range(K) for axis in (k, K + k)])
    return t.reshape([m * n for m, n in zip(in_modes, out_modes)])


def unfolding_singular_values(tensor: np.ndarray) -> list[np.ndarray]:
    """Singular values (descending) of each unfolding k = 1 .. K-1 of a K-way tensor: its
    first k axes against the rest. TT-SVD's error at ranks r_k is bounded by their tails."""
    return [np.linalg.svd(tensor.reshape(math.prod(tensor.shape[:k]), -1), compute_uv=False)
            for k in range(1, tensor.ndim)]


def ranks_for_tolerance(tensor: np.ndarray, rel_tol: float) -> tuple[int, ...]:
    """Smallest ranks whose TT-SVD has relative Frobenius error <= rel_tol (guaranteed).

    TT-SVD error obeys ||A - TT||^2 <= sum_k eps_k^2, where eps_k is the best rank-r_k
    error of the k-th unfolding of A (Oseledets 2011, Thm 2.2). We give each of the K-1
    bonds an equal share, eps_k <= rel_tol * ||A|| / sqrt(K-1), and take the smallest rank
    meeting it from that unfolding's singular values. The bound is usually loose, so the
    achieved error is typically well below rel_tol.
    """
    if not 0 <= rel_tol < 1:
        raise ValueError(f"rel_tol must be in [0, 1), got {rel_tol}")
    K = tensor.ndim
    budget = rel_tol * np.linalg.norm(tensor) / math.sqrt(max(K - 1, 1))
    ranks = [1]
    for singular in unfolding_singular_values(tensor):
        # tail[r] = error of the best rank-r approximation (r = 0..len(singular)).
        tail = np.sqrt(np.cumsum((singular**2)[::-1])[::-1])
        tail = np.append(tail, 0.0)
        ranks.append(max(1, int(np.argmax(tail <= budget))))
    return tuple(ranks + [1])


def tt_svd(weight: torch.Tensor, in_modes, out_modes, max_ranks, rel_tol=None):
    """TT-SVD of an (in, out) matrix into float64 numpy cores (r_k, m_k, n_k, r_{k+1}).

    Ranks: `max_ranks` per bond (already validated), lowered further to the `rel_tol` ranks
    if given. Ranks may come out lower where an unfolding is smaller than asked for.
    """
    dense = weight.detach().to("cpu", torch.float64).numpy()
    tensor = interleaved_tensor(dense, in_modes, out_modes)
    ranks = tuple(max_ranks)
    if rel_tol is not None:
        ranks = tuple(map(min, ranks, ranks_for_tolerance(tensor, rel_tol)))
    # numpy backend in a context: tensorly's backend is process-global state that other
    # code may set, and the decomposition is a one-off, gradient-free, float64 step.
    with tl.backend_context("numpy"):
        factors = tensor_train(tensor, rank=list(ranks))
    return [
        f.reshape(f.shape[0], m, n, f.shape[-1]) for f, m, n in zip(factors, in_modes, out_modes)
    ]


def init_tt_cores_(cores, std: float) -> None:
    """Fill cores with N(0, s_k^2) so the materialised matrix has entry std `std`.

    An entry of W is a sum over prod_k r_k (internal bonds) paths of products of K
    independent core entries, so Var(W) = prod_k r_k * prod_k s_k^2. Choosing
    s_k^2 = std^(2/K) / r_k (r_k = core k's left bond, 1 for the first core) divides by
    each core's incoming bond and spreads the target variance evenly over the K cores.
    """
    K = len(cores)
    with torch.no_grad():
        for core in cores:
            core.normal_(0.0, std ** (1.0 / K) / math.sqrt(core.shape[0]))


class TTLinear(nn.Module):
    """y = x @ W + bias with W (in_features, out_features) held as K TT cores."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        max_rank: int = 8,
        n_cores: int = 3,
        bias: bool = True,
        in_modes=None,
        out_modes=None,
        *,
        ranks=None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.in_modes, self.out_modes = _modes(in_features, out_features, n_cores, in_modes,
                                               out_modes, None if ranks is not None else max_rank)
        if len(self.in_modes) != len(self.out_modes):
            raise ValueError(
                f"in_modes and out_modes must have the same length, got {self.in_modes} and {self.out_modes}"
            )
        r = resolve_ranks(self.in_modes, self.out_modes, ranks=ranks, max_rank=max_rank)
        shapes = [(r[k], m, n, r[k + 1]) for k, (m, n) in enumerate(zip(self.in_modes, self.out_modes))]
        self.cores = nn.ParameterList([nn.Parameter(torch.empty(s)) for s in shapes])
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._plan = None
        # Inference lowering: where the plan says materialising W beats the chain, keep W
        # between calls instead of rebuilding it (only without autograd; see dense_weight).
        self.cache_dense = True
        self._dense_cache = ParameterCache()
        # How an unmasked call runs: "auto" (the plan's choice by token count), "tt" (always
        # the chain) or "dense" (always x @ W). Export fixes it per layer (export/lowering.py):
        # an exported graph cannot switch paths on the token count at run time.
        self.lowering = "auto"
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        """Cores so that W has entry std `std` (default 1/sqrt(in_features), which keeps
        the activation variance, LeCun-style); bias to zero."""
        init_tt_cores_(self.cores, std if std is not None else self.in_features**-0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        ranks=None,
        max_rank=None,
        rel_tol=None,
        n_cores=3,
        in_modes=None,
        out_modes=None,
    ) -> "TTLinear":
        """TT-SVD of weight (in, out) (the transpose of nn.Linear.weight).

        Ranks: explicit `ranks`, or per bond the smallest of `max_rank`, the `rel_tol` ranks
        (see `ranks_for_tolerance`) and the full rank; with none given it is exact.
        """
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (in, out), got shape {tuple(weight.shape)}")
        in_features, out_features = weight.shape
        in_modes, out_modes = _modes(in_features, out_features, n_cores, in_modes, out_modes,
                                     max_rank)
        if ranks is not None and (max_rank is not None or rel_tol is not None):
            raise ValueError("give either ranks or max_rank/rel_tol, not both")
        if ranks is None and max_rank is None:
            max_ranks = full_ranks(in_modes, out_modes)
        else:
            max_ranks = resolve_ranks(in_modes, out_modes, ranks=ranks, max_rank=max_rank)
        factors = tt_svd(weight, in_modes, out_modes, max_ranks, rel_tol)
        layer = cls(
            in_features,
            out_features,
            bias=bias is not None,
            in_modes=in_modes,
            out_modes=out_modes,
            ranks=[f.shape[0] for f in factors] + [1],
        ).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            for core, factor in zip(layer.cores, factors):
                core.copy_(torch.from_numpy(factor))
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    @property
    def ranks(self) -> tuple[int, ...]:
        """(1, r_1, ..., r_{K-1}, 1), read from the cores."""
        return tuple(c.shape[0] for c in self.cores) + (1,)

    @property
    def plan(self) -> ContractionPlan:
        """Cheapest contraction order; recomputed only when the ranks change."""
        return self._plan_for(list(self.cores))

    def _plan_for(self, cores) -> ContractionPlan:
        # Takes the cores as a plain list: iterating a ParameterList costs microseconds,
        # which matters for one-token decoding.
        ranks = tuple(c.shape[0] for c in cores) + (1,)
        if self._plan is None or self._plan.ranks != ranks:
            self._plan = plan_contraction(self.in_modes, self.out_modes, ranks)
        return self._plan

    def to_dense(self) -> torch.Tensor:
        """W: (in_features, out_features)."""
        return tt_to_dense(list(self.cores))

    def dense_weight(self) -> torch.Tensor:
        """W, materialised once and reused while the cores are unchanged when no gradient is
        recorded (inference); with autograd on, rebuilt so gradients reach the cores."""
        cores = list(self.cores)
        if not self.cache_dense:
            return tt_to_dense(cores)
        return self._dense_cache.get(cores, lambda: tt_to_dense(cores))

    def forward(self, x: torch.Tensor, bond_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features); bond_mask (..., R) scales bond
        channels per token (see `tt_matmul`)."""
        cores = list(self.cores)
        if self.lowering == "dense" and bond_mask is None:
            y = x @ self.dense_weight()
        else:
            y = tt_matmul(x, cores, self._plan_for(cores), bond_mask,
                          dense_weight=self.dense_weight, allow_dense=self.lowering != "tt")
        return y if self.bias is None else y + self.bias

    def flops(self, n_tokens: int) -> int:
        """FLOPs of the unmasked x @ W over n_tokens (2 per multiply-add), from the plan.

        Excludes the bias add (n_tokens * out_features), as the usual 2*in*out count does.
        A fixed lowering counts its own path (W itself is then a constant, built once).
        """
        if self.lowering == "dense":
            return 2 * n_tokens * self.in_features * self.out_features
        if self.lowering == "tt":
            return n_tokens * self.plan.flops_per_token
        return self.plan.flops(n_tokens)

    @torch.no_grad()
    def round_(self, max_rank: int | None = None, rel_tol: float | None = None) -> float:
        """Re-truncate the ranks in place; returns the relative Frobenius error introduced.

        Goes through the dense matrix and a fresh TT-SVD: for layer sizes here W has at most
        a few million entries, so this is cheap and reuses exactly the `from_dense` rank
        rules (true TT rounding via QR sweeps only pays off when W does not fit in memory).
        Ranks never grow. New core Parameters replace the old ones, so rebuild any optimizer.
        """
        if max_rank is None and rel_tol is None:
            raise ValueError("round_ needs max_rank and/or rel_tol")
        if max_rank is not None and max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        dense = self.to_dense()
        max_ranks = tuple(r if max_rank is None else min(r, max_rank) for r in self.ranks)
        self.set_from_dense(dense, max_ranks, rel_tol)
        error = torch.linalg.norm(self.to_dense() - dense) / torch.linalg.norm(dense)
        return float(error)

    def set_empty_cores(self, ranks) -> None:
        """Uninitialised cores with ranks (1, r_1, ..., 1), checked against the full ranks:
        to load values into next, or to cost a shape without computing one. New
        Parameters (plans follow the ranks by themselves): rebuild any optimizer."""
        ranks = resolve_ranks(self.in_modes, self.out_modes, ranks=ranks)
        like = self.cores[0]
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(ranks[k], m, n, ranks[k + 1], dtype=like.dtype,
                                     device=like.device), requires_grad=like.requires_grad)
            for k, (m, n) in enumerate(zip(self.in_modes, self.out_modes)))

    @torch.no_grad()
    def set_from_dense(self, weight: torch.Tensor, max_ranks, rel_tol: float | None = None) -> None:
        """Cores := TT-SVD of weight (in, out) with at most max_ranks (1, r_1, ..., 1) per
        bond (fewer where rel_tol allows). New Parameters: rebuild any optimizer."""
        factors = tt_svd(weight, self.in_modes, self.out_modes, max_ranks, rel_tol)
        like = self.cores[0]
        self.cores = nn.ParameterList(
            [nn.Parameter(torch.from_numpy(f).to(like.device, like.dtype)) for f in factors]
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={self.ranks}, "
            f"bias={self.bias is not None}"
        )
