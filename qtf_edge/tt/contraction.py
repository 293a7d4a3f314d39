"""Contract an input with a tensor-train matrix, core by core, in the cheapest order.

A TT matrix W of shape (prod m, prod n) is stored as K cores G_k of shape
(r_k, m_k, n_k, r_{k+1}) (0-indexed, r_0 = r_K = 1):

    W[(i_0..i_{K-1}), (j_0..j_{K-1})] = G_0[:, i_0, j_0, :] @ G_1[:, i_1, j_1, :] @ ... @ G_{K-1}[...]

with the multi-indices read in C order (i_0 most significant), i.e. exactly what
`x.reshape(B, *in_modes)` and `y.reshape(B, out_features)` produce.

An *order* contracts x with one core at a time: it starts at some core s and then grows
the contracted interval [a, b] by one core on the left or on the right, so there are
2**(K-1) orders. Their cost differs a lot when modes or ranks are asymmetric, and does not
depend on the number of tokens, so the cheapest one is found once per rank setting.

Memory layout (why there is no einsum and almost no permute): the running state is kept
in the "natural" layout

    (m_0 .. m_{a-1},  r_a,  n_a .. n_b,  r_{b+1},  m_{b+1} .. m_{K-1},  tokens)

which is the ring order of the TT network cut at the token axis. The axes a step
contracts, (m_{a-1}, r_a) on the left or (r_{b+1}, m_{b+1}) on the right, are always
adjacent, and the axes it creates land exactly where the natural layout wants them. So
each step is one (batched) GEMM, core_matrix (R, S) @ state (P, S, Q*tokens), on a plain
view of the previous output, and the axis labels never need to be materialised: P, S, R,
Q are computed once in the plan. Tokens sit last so every GEMM has at least `tokens`
columns (large, BLAS-friendly); the only copies are x -> x^T on entry and y^T -> y on exit.

Many tokens: when the per-token chain costs more than a dense matmul (high rank, small
layer), contracting the cores with each other first (materialising W once, a fixed cost)
and then doing one dense GEMM is cheaper from some token count on. The plan records that
crossover and `tt_matmul` takes the cheaper path; a bond mask always uses the chain because
it gives each token its own W.
"""

from dataclasses import dataclass
from functools import lru_cache
from math import prod

import torch

from qtf_edge.tensor_checks import check_integer_range


@dataclass(frozen=True)
class MaskedBond:
    """Where bond `bond` (with `size` channels) sits in the state right after a step:
    the state is viewed as (before, size, after, tokens) to scale its channels."""

    bond: int
    before: int
    size: int
    after: int


@dataclass(frozen=True)
class ContractionStep:
    """One GEMM: core_matrix (R, S) @ state viewed (P, S, Q * tokens) -> (P, R, Q * tokens).

    core_matrix = cores[core].permute(core_perm).reshape(R, S).
    """

    core: int
    core_perm: tuple[int, int, int, int]
    P: int
    S: int
    R: int
    Q: int
    masked_bonds: tuple[MaskedBond, ...]

    @property
    def flops_per_token(self) -> int:
        return 2 * self.P * self.S * self.R * self.Q


# Core axes are (r_left, m, n, r_right). Rows of the core matrix must follow the natural
# layout of the axes a step creates, columns that of the axes it contracts.
_START_PERM = (0, 2, 3, 1)  # rows (r_left, n, r_right), cols (m,)
_LEFT_PERM = (0, 2, 1, 3)  # rows (r_left, n), cols (m, r_right)
_RIGHT_PERM = (2, 3, 0, 1)  # rows (n, r_right), cols (r_left, m)


def _compile(in_modes, out_modes, ranks, order) -> tuple[ContractionStep, ...]:
    """Turn an order into GEMM shapes, following the natural layout described above."""
    m, n, r = in_modes, out_modes, ranks
    K = len(m)
    if sorted(order) != list(range(K)):
        raise ValueError(f"order must be a permutation of range({K}), got {order}")
    steps = []
    a = b = order[0]
    P, Q = prod(m[:a]), prod(m[a + 1 :])
    masks = []
    if a > 0:
        masks.append(MaskedBond(a, P, r[a], n[a] * r[a + 1] * Q))
    if a + 1 < K:
        masks.append(MaskedBond(a + 1, P * r[a] * n[a], r[a + 1], Q))
    steps.append(ContractionStep(a, _START_PERM, P, m[a], r[a] * n[a] * r[a + 1], Q, tuple(masks)))
    for k in order[1:]:
        if k == a - 1:  # grow left: contract (m_k, r_{k+1}), create (r_k, n_k)
            P = prod(m[:k])
            Q = prod(n[a : b + 1]) * r[b + 1] * prod(m[b + 1 :])
            mask = (MaskedBond(k, P, r[k], n[k] * Q),) if k > 0 else ()
            steps.append(ContractionStep(k, _LEFT_PERM, P, m[k] * r[k + 1], r[k] * n[k], Q, mask))
            a = k
        elif k == b + 1:  # grow right: contract (r_k, m_k), create (n_k, r_{k+1})
            P = prod(m[:a]) * r[a] * prod(n[a:k])
            Q = prod(m[k + 1 :])
            mask = (MaskedBond(k + 1, P * n[k], r[k + 1], Q),) if k + 1 < K else ()
            steps.append(ContractionStep(k, _RIGHT_PERM, P, r[k] * m[k], n[k] * r[k + 1], Q, mask))
            b = k
        else:
            raise ValueError(
                f"order {order} is not an interval order: core {k} is not adjacent to "
                f"the contracted cores {a}..{b}"
            )
    return tuple(steps)


def interval_orders(n_cores: int):
    """Yield all 2**(n_cores-1) orders: a start core, then one neighbour at a time."""

    def grow(order, a, b):
        if b - a + 1 == n_cores:
            yield order
            return
        if a > 0:
            yield from grow(order + (a - 1,), a - 1, b)
        if b + 1 < n_cores:
            yield from grow(order + (b + 1,), a, b + 1)

    for start in range(n_cores):
        yield from grow((start,), start, start)


@dataclass(frozen=True)
class ContractionPlan:
    """The cheapest contraction order for one (in_modes, out_modes, ranks) setting.

    ranks has length K + 1 with ranks[0] == ranks[K] == 1. `flops_per_token` counts a
    multiply-add as 2 FLOPs and excludes the bias.
    """

    in_modes: tuple[int, ...]
    out_modes: tuple[int, ...]
    ranks: tuple[int, ...]
    order: tuple[int, ...]
    steps: tuple[ContractionStep, ...]

    @property
    def core_shapes(self) -> tuple[tuple[int, int, int, int], ...]:
        m, n, r = self.in_modes, self.out_modes, self.ranks
        return tuple((r[k], m[k], n[k], r[k + 1]) for k in range(len(m)))

    @property
    def in_features(self) -> int:
        return prod(self.in_modes)

    @property
    def out_features(self) -> int:
        return prod(self.out_modes)

    @property
    def flops_per_token(self) -> int:
        """FLOPs of the core-by-core chain for one token."""
        return sum(step.flops_per_token for step in self.steps)

    @property
    def dense_flops(self) -> int:
        """FLOPs of `tt_to_dense` (materialising W), paid once per call on the dense path."""
        return _dense_chunk_flops(self.in_modes, self.out_modes, self.ranks, 0, len(self.in_modes))

    @property
    def dense_from_tokens(self) -> int | None:
        """Smallest token count for which materialising W and one dense GEMM needs fewer
        FLOPs than the chain; None when the chain is always cheaper."""
        extra_per_token = self.flops_per_token - 2 * self.in_features * self.out_features
        if extra_per_token <= 0:
            return None
        return self.dense_flops // extra_per_token + 1

    def uses_dense(self, n_tokens: int) -> bool:
        """Whether an unmasked `tt_matmul` over n_tokens takes the materialise-then-GEMM path."""
        return self.dense_from_tokens is not None and n_tokens >= self.dense_from_tokens

    def flops(self, n_tokens: int) -> int:
        """FLOPs of an unmasked `tt_matmul` over n_tokens tokens (the path it takes)."""
        if self.uses_dense(n_tokens):
            return self.dense_flops + 2 * n_tokens * self.in_features * self.out_features
        return n_tokens * self.flops_per_token

    def flops_of(self, order) -> int:
        """FLOPs per token of any other interval order (ValueError if it is not one)."""
        return plan_contraction(self.in_modes, self.out_modes, self.ranks, order).flops_per_token


def _validate_shapes(in_modes, out_modes, ranks) -> None:
    K = len(in_modes)
    if K < 1 or len(out_modes) != K:
        raise ValueError(
            f"in_modes and out_modes must have the same length >= 1, got {in_modes} and {out_modes}"
        )
    if any(d < 1 for d in in_modes + out_modes):
        raise ValueError(f"modes must be >= 1, got in_modes={in_modes} out_modes={out_modes}")
    if len(ranks) != K + 1 or ranks[0] != 1 or ranks[-1] != 1 or min(ranks) < 1:
        raise ValueError(
            f"ranks must have length {K + 1}, start and end with 1 and be >= 1, got {ranks}"
        )


def _ints(values) -> tuple[int, ...]:
    """Hashable, canonical cache key (accepts lists, tuples, torch.Size)."""
    return tuple(int(v) for v in values)


@lru_cache(maxsize=None)
def _plan(in_modes, out_modes, ranks, order) -> ContractionPlan:
    _validate_shapes(in_modes, out_modes, ranks)
    if order is not None:
        return ContractionPlan(in_modes, out_modes, ranks, order, _compile(in_modes, out_modes, ranks, order))
    compiled = {o: _compile(in_modes, out_modes, ranks, o) for o in interval_orders(len(in_modes))}

    def cost(o):
        steps = compiled[o]
        # Ties in FLOPs go to the order with fewer GEMM calls (sum of batch counts P).
        return sum(s.flops_per_token for s in steps), sum(s.P for s in steps), o

    best = min(compiled, key=cost)
    return ContractionPlan(in_modes, out_modes, ranks, best, compiled[best])


def plan_contraction(in_modes, out_modes, ranks, order=None) -> ContractionPlan:
    """Cheapest interval order for x (B, prod in_modes) @ TT(cores with these shapes).

    Brute force over all 2**(K-1) orders (K is 2-6 in practice); cached per setting.
    Pass `order` to force one (e.g. to time or test it); ValueError if it is not valid.
    """
    return _plan(_ints(in_modes), _ints(out_modes), _ints(ranks), None if order is None else _ints(order))


def _check_cores(cores, plan: ContractionPlan) -> None:
    shapes = tuple(tuple(c.shape) for c in cores)
    if shapes != plan.core_shapes:
        raise ValueError(f"cores have shapes {list(shapes)} but the plan expects {list(plan.core_shapes)}")


FOLD_BELOW_COLUMNS = 32  # measured: at 12 columns one folded GEMM beat the bmm by ~30%


def _step_matmul(core_matrix: torch.Tensor, state: torch.Tensor, step: ContractionStep, cols: int):
    """core_matrix (R, S) @ state (P, S, cols) -> flat (P, R, cols), as few BLAS calls as possible."""
    if step.P == 1:
        return core_matrix @ state.view(step.S, cols)
    if cols == 1:
        return state.view(step.P, step.S) @ core_matrix.t()
    if cols < FOLD_BELOW_COLUMNS:
        # Few columns (one token, say): P small bmm's cost more than copying the small state
        # so that P folds into the columns of one GEMM, and copying the result back.
        folded = state.view(step.P, step.S, cols).transpose(0, 1).reshape(step.S, step.P * cols)
        return (core_matrix @ folded).view(step.R, step.P, cols).transpose(0, 1).contiguous()
    # bmm over P with the core broadcast (stride 0); torch.matmul would instead transpose
    # and copy the state to fold P into rows.
    return torch.bmm(core_matrix.expand(step.P, step.R, step.S), state.view(step.P, step.S, cols))


def tt_matmul(x: torch.Tensor, cores, plan: ContractionPlan, bond_mask: torch.Tensor | None = None,
              dense_weight=None, allow_dense: bool = True):
    """y = x @ tt_to_dense(cores), optionally with per-token bond masks.

    dense_weight: optional callable returning W (e.g. a layer's cached copy), used where
        the plan takes the materialise-then-GEMM path; by default W is built here.
    allow_dense: False runs the chain even where the plan would materialise W.

    x: (..., in_features); cores: K tensors (r_k, m_k, n_k, r_{k+1}) matching `plan`.
    bond_mask: None or (..., R) with R >= every internal rank. Token t then uses the TT
        matrix whose internal bond k has channel j scaled by bond_mask[t, j], i.e.
        G_0 D G_1 D ... G_{K-1} with D = diag(bond_mask[t, :r_k]) between cores.
    Returns y: (..., out_features).
    """
    _check_cores(cores, plan)
    lead = x.shape[:-1]
    if x.shape[-1] != plan.in_features:
        raise ValueError(f"x must have last dimension {plan.in_features}, got {x.shape[-1]}")
    tokens = prod(lead)
    if bond_mask is None and allow_dense and plan.uses_dense(tokens):
        weight = tt_to_dense(cores) if dense_weight is None else dense_weight()
        dense = x.reshape(tokens, plan.in_features) @ weight
        return dense.reshape(*lead, plan.out_features)
    # Tokens last: see the module docstring. For one token this is a free view.
    state = x.reshape(tokens, plan.in_features).t().contiguous()
    mask = None
    if bond_mask is not None:
        max_rank = max(plan.ranks)
        if bond_mask.shape[:-1] != lead or bond_mask.shape[-1] < max_rank:
            raise ValueError(
                f"bond_mask must have shape {(*lead, max_rank)} (last dim >= {max_rank}), "
                f"got {tuple(bond_mask.shape)}"
            )
        # (R, tokens) contiguous: the per-step broadcast multiply then streams both operands.
        mask = bond_mask.reshape(tokens, -1).t().to(x.dtype).contiguous()
    for step in plan.steps:
        core_matrix = cores[step.core].permute(step.core_perm).reshape(step.R, step.S)
        state = _step_matmul(core_matrix, state, step, step.Q * tokens)
        if mask is not None:
            for bond in step.masked_bonds:
                scale = mask[: bond.size].view(1, bond.size, 1, tokens)
                state = state.view(bond.before, bond.size, bond.after, tokens)
                # In place saves allocating (and page-faulting) a state-sized buffer. It is
                # autograd-safe: the GEMMs' backward needs their inputs, not this output, and
                # mul's backward w.r.t. the state needs only the mask. A mask that needs its
                # own gradient needs the unscaled state, so it gets the out-of-place multiply.
                state = state * scale if mask.requires_grad else state.mul_(scale)
    return state.view(plan.out_features, tokens).t().reshape(*lead, plan.out_features).contiguous()


def _merge_point(lo: int, hi: int) -> int:
    """Where `tt_to_dense` splits cores[lo:hi]: halves keep every merge GEMM and permute large."""
    return (lo + hi) // 2


def _dense_chunk(cores, lo: int, hi: int) -> torch.Tensor:
    """Contract cores[lo:hi] into (r_lo, M, N, r_hi) with M, N the row/column multi-indices."""
    if hi - lo == 1:
        return cores[lo]
    mid = _merge_point(lo, hi)
    left, right = _dense_chunk(cores, lo, mid), _dense_chunk(cores, mid, hi)
    r_lo, M_L, N_L, r_mid = left.shape
    _, M_R, N_R, r_hi = right.shape
    merged = left.reshape(-1, r_mid) @ right.reshape(r_mid, -1)  # (r_lo, M_L, N_L, M_R, N_R r_hi)
    # One permute per merge that moves whole (N_R r_hi) rows: close to memcpy speed, unlike
    # a single 2K-axis permute at the end.
    merged = merged.view(r_lo, M_L, N_L, M_R, N_R * r_hi).permute(0, 1, 3, 2, 4)
    return merged.reshape(r_lo, M_L * M_R, N_L * N_R, r_hi)


def _dense_chunk_flops(m, n, r, lo: int, hi: int) -> int:
    """FLOPs of `_dense_chunk(cores, lo, hi)` for cores of modes m, n and ranks r."""
    if hi - lo == 1:
        return 0
    mid = _merge_point(lo, hi)
    merge = 2 * r[lo] * prod(m[lo:mid]) * prod(n[lo:mid]) * r[mid] * prod(m[mid:hi]) * prod(n[mid:hi]) * r[hi]
    return _dense_chunk_flops(m, n, r, lo, mid) + _dense_chunk_flops(m, n, r, mid, hi) + merge


def tt_to_dense(cores) -> torch.Tensor:
    """Materialise the TT matrix: cores (r_k, m_k, n_k, r_{k+1}) -> (prod m, prod n)."""
    full = _dense_chunk(cores, 0, len(cores))
    return full.reshape(full.shape[1], full.shape[2])


def rank_to_mask(ranks: torch.Tensor, max_rank: int) -> torch.Tensor:
    """Per-token rank -> 0/1 bond mask: (...) integer ranks -> (..., max_rank) float32,
    1.0 where channel index < rank."""
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    check_integer_range(ranks, 0, max_rank, "ranks")
    channels = torch.arange(max_rank, device=ranks.device)
    return (channels < ranks.unsqueeze(-1)).to(torch.float32)
