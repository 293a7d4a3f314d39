"""Tests for qtf_edge.tt: every check compares against an independent reference."""

import itertools
import math

import pytest
import torch

from qtf_edge.tt import (
    TTEmbedding,
    TTLinear,
    factorize_dim,
    full_ranks,
    interval_orders,
    plan_contraction,
    rank_to_mask,
    tt_matmul,
    tt_to_dense,
)


def random_cores(in_modes, out_modes, ranks, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(ranks[k], m, n, ranks[k + 1], generator=gen, dtype=dtype)
        for k, (m, n) in enumerate(zip(in_modes, out_modes))
    ]


def reference_dense(cores, scale=None):
    """Entry by entry: W[i, j] = G_0[:, i_0, j_0, :] D G_1[...] D ..., D = diag(scale[:r_k]).

    Multi-indices are read in C order (i_0 most significant), independent of tt_to_dense.
    """
    m = [c.shape[1] for c in cores]
    n = [c.shape[2] for c in cores]
    W = torch.zeros(math.prod(m), math.prod(n), dtype=cores[0].dtype)
    for row, I in enumerate(itertools.product(*map(range, m))):
        for col, J in enumerate(itertools.product(*map(range, n))):
            chain = cores[0][:, I[0], J[0], :]
            for k in range(1, len(cores)):
                if scale is not None:
                    chain = chain * scale[: chain.shape[1]]
                chain = chain @ cores[k][:, I[k], J[k], :]
            W[row, col] = chain.item()
    return W


def independent_flops(in_modes, out_modes, ranks, order):
    """FLOPs of a pairwise einsum chain: each step costs 2 * product of all labels touched."""
    K = len(in_modes)
    size = {("m", k): in_modes[k] for k in range(K)}
    size |= {("n", k): out_modes[k] for k in range(K)}
    size |= {("r", k): ranks[k] for k in range(K + 1)}
    state = {("m", k) for k in range(K)}
    total = 0
    for k in order:
        core = {("r", k), ("m", k), ("n", k), ("r", k + 1)}
        total += 2 * math.prod(size[label] for label in state | core)
        state = state ^ core  # shared labels (m_k, a bond) are summed out
    assert state == {("n", k) for k in range(K)} | {("r", 0), ("r", K)}
    return total


def all_interval_orders_brute(K):
    """Orders from permutations: valid iff every prefix is a contiguous interval."""
    return [
        p for p in itertools.permutations(range(K))
        if all(max(p[:i]) - min(p[:i]) == i - 1 for i in range(1, K + 1))
    ]


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


SHAPES = [  # (in_modes, out_modes, ranks)
    ((6,), (5,), (1, 1)),
    ((2, 3), (4, 2), (1, 3, 1)),
    ((3, 2, 4), (2, 5, 3), (1, 4, 3, 1)),
    ((2, 2, 3, 2), (3, 2, 2, 2), (1, 2, 5, 3, 1)),
    ((4, 1, 3), (1, 6, 2), (1, 2, 2, 1)),
]


# ---------------------------------------------------------------- factorize_dim


@pytest.mark.parametrize(
    "dim,n,expected",
    [(768, 3, (8, 8, 12)), (3072, 3, (12, 16, 16)), (512, 3, (8, 8, 8)), (768, 4, (4, 4, 6, 8)),
     (1000, 3, (10, 10, 10)), (64, 2, (8, 8)), (127, 1, (127,)), (3, 2, (1, 3))],
)
def test_factorize_dim_known(dim, n, expected):
    assert factorize_dim(dim, n) == expected


def test_factorize_dim_is_best_balanced_split():
    for dim in range(1, 400):
        for n in (2, 3):
            try:
                split = factorize_dim(dim, n)
            except ValueError:
                continue
            assert math.prod(split) == dim and list(split) == sorted(split) and len(split) == n
            ratio = split[-1] / split[0]
            assert ratio <= 4
            others = [s for s in itertools.product(range(1, dim + 1), repeat=n)
                      if math.prod(s) == dim] if dim < 60 else []
            assert all(max(s) / min(s) >= ratio for s in others)


def test_factorize_dim_errors_name_dimension_and_nearby():
    with pytest.raises(ValueError, match=r"dimension 127 .*prime.*128"):
        factorize_dim(127, 3)
    with pytest.raises(ValueError, match=r"dimension 50257 .*ratio.*nearby usable: \d+ or \d+"):
        factorize_dim(50257, 3)
    with pytest.raises(ValueError) as info:
        factorize_dim(50304, 3)  # 2^7 * 3 * 131: composite but unbalanced
    above, below = map(int, str(info.value).split("nearby usable: ")[1].split(" or "))
    assert below < 50304 < above
    for usable in (above, below):
        factorize_dim(usable, 3)
    for bad in [(0, 3), (5, 0), (-4, 2)]:
        with pytest.raises(ValueError, match="must be"):
            factorize_dim(*bad)


# ---------------------------------------------------------------- tt_to_dense / plans


@pytest.mark.parametrize("in_modes,out_modes,ranks", SHAPES)
def test_tt_to_dense_matches_entrywise_reference(in_modes, out_modes, ranks):
    cores = random_cores(in_modes, out_modes, ranks)
    torch.testing.assert_close(tt_to_dense(cores), reference_dense(cores))


@pytest.mark.parametrize("K", [2, 3, 4, 5])
def test_interval_orders_are_all_and_only_valid_orders(K):
    assert sorted(interval_orders(K)) == sorted(all_interval_orders_brute(K))
    assert len(all_interval_orders_brute(K)) == 2 ** (K - 1)


def test_plan_is_flop_minimal_against_brute_force():
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        K = int(torch.randint(2, 6, (1,), generator=gen))
        m = torch.randint(1, 9, (K,), generator=gen).tolist()
        n = torch.randint(1, 9, (K,), generator=gen).tolist()
        r = [1] + torch.randint(1, 17, (K - 1,), generator=gen).tolist() + [1]
        plan = plan_contraction(m, n, r)
        costs = {o: independent_flops(m, n, r, o) for o in all_interval_orders_brute(K)}
        assert plan.flops_per_token == costs[plan.order] == min(costs.values())
        for order, cost in costs.items():
            assert plan.flops_of(order) == cost


def test_plan_direction_follows_asymmetry():
    # Contract the big input mode first, where it also meets the small output mode.
    m, n, r = (2, 4, 16), (16, 4, 2), (1, 8, 8, 1)
    right = plan_contraction(m, n, r)
    left = plan_contraction(m[::-1], n[::-1], r[::-1])
    assert right.order == (2, 1, 0)
    assert left.order == (0, 1, 2)
    assert left.flops_per_token == right.flops_per_token
    assert right.flops_of((0, 1, 2)) > 10 * right.flops_per_token


def test_plan_rejects_bad_orders_and_shapes():
    plan = plan_contraction((2, 3, 4), (2, 3, 4), (1, 2, 2, 1))
    with pytest.raises(ValueError, match="not an interval order"):
        plan.flops_of((0, 2, 1))
    with pytest.raises(ValueError, match="permutation"):
        plan.flops_of((0, 1))
    with pytest.raises(ValueError, match="ranks must"):
        plan_contraction((2, 3), (2, 3), (2, 2, 1))


def test_plan_dense_crossover():
    plan = plan_contraction((4, 4, 8), (8, 8, 8), (1, 16, 16, 1))  # rank 16 on 128 -> 512
    dense_per_token = 2 * 128 * 512
    assert plan.flops_per_token > dense_per_token  # so materialising wins from some count on
    T = plan.dense_from_tokens
    assert plan.flops(T - 1) == (T - 1) * plan.flops_per_token
    assert plan.flops(T) == plan.dense_flops + T * dense_per_token < T * plan.flops_per_token
    assert plan_contraction((8, 8, 12), (12, 16, 16), (1, 4, 4, 1)).dense_from_tokens is None


# ---------------------------------------------------------------- tt_matmul


@pytest.mark.parametrize("in_modes,out_modes,ranks", SHAPES)
def test_tt_matmul_every_order_and_batch_shape(in_modes, out_modes, ranks):
    cores = random_cores(in_modes, out_modes, ranks)
    W = reference_dense(cores)
    for order in all_interval_orders_brute(len(in_modes)):
        plan = plan_contraction(in_modes, out_modes, ranks, order=order)
        for lead in [(), (1,), (5,), (2, 3), (2, 1, 3)]:
            x = torch.randn(*lead, W.shape[0], dtype=torch.float64)
            y = tt_matmul(x, cores, plan)
            assert y.shape == (*lead, W.shape[1]) and y.is_contiguous()
            torch.testing.assert_close(y, x @ W, rtol=1e-12, atol=1e-12)


def test_tt_matmul_dense_path_matches():
    m, n, r = (4, 4, 8), (8, 8, 8), (1, 16, 16, 1)
    cores = random_cores(m, n, r, dtype=torch.float32)
    plan = plan_contraction(m, n, r)
    x = torch.randn(plan.dense_from_tokens + 3, 128)
    assert plan.uses_dense(x.shape[0])
    ref = x.double() @ tt_to_dense([c.double() for c in cores])
    assert rel_err(tt_matmul(x, cores, plan), ref) < 1e-5


@pytest.mark.parametrize("in_modes,out_modes,ranks", SHAPES)
def test_bond_mask_matches_per_token_reference(in_modes, out_modes, ranks):
    cores = random_cores(in_modes, out_modes, ranks)
    max_rank = max(ranks) + 2  # masks may be wider than any bond
    x = torch.randn(2, 3, math.prod(in_modes), dtype=torch.float64)
    soft = torch.rand(2, 3, max_rank, dtype=torch.float64)
    hard = rank_to_mask(torch.randint(0, max_rank + 1, (2, 3)), max_rank).double()
    for mask in (soft, hard):
        expected = torch.stack([
            torch.stack([x[a, b] @ reference_dense(cores, scale=mask[a, b]) for b in range(3)])
            for a in range(2)
        ])
        for order in all_interval_orders_brute(len(in_modes)):
            plan = plan_contraction(in_modes, out_modes, ranks, order=order)
            torch.testing.assert_close(tt_matmul(x, cores, plan, mask), expected, rtol=1e-12, atol=1e-12)


def test_bond_mask_all_ones_is_identity_and_uses_chain_at_many_tokens():
    m, n, r = (4, 4, 8), (8, 8, 8), (1, 16, 16, 1)
    cores = random_cores(m, n, r)
    plan = plan_contraction(m, n, r)
    x = torch.randn(plan.dense_from_tokens + 1, 128, dtype=torch.float64)
    torch.testing.assert_close(tt_matmul(x, cores, plan, torch.ones(x.shape[0], 16, dtype=torch.float64)),
                               x @ tt_to_dense(cores))
    with pytest.raises(ValueError, match="bond_mask must have shape"):
        tt_matmul(x, cores, plan, torch.ones(x.shape[0], 15))


def test_rank_to_mask():
    mask = rank_to_mask(torch.tensor([[0, 2], [4, 1]]), 4)
    assert mask.dtype == torch.float32 and mask.shape == (2, 2, 4)
    expected = torch.tensor([[[0, 0, 0, 0], [1, 1, 0, 0]], [[1, 1, 1, 1], [1, 0, 0, 0]]], dtype=torch.float32)
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match=r"ranks must lie in \[0, 4\]"):
        rank_to_mask(torch.tensor([5]), 4)
    with pytest.raises(ValueError, match="integer"):
        rank_to_mask(torch.tensor([1.0]), 4)


def test_tt_matmul_rejects_mismatched_cores_and_inputs():
    m, n, r = (2, 3), (3, 2), (1, 2, 1)
    cores = random_cores(m, n, r)
    plan = plan_contraction(m, n, (1, 3, 1))
    with pytest.raises(ValueError, match="plan expects"):
        tt_matmul(torch.randn(6, dtype=torch.float64), cores, plan)
    with pytest.raises(ValueError, match="last dimension 6"):
        tt_matmul(torch.randn(5, dtype=torch.float64), cores, plan_contraction(m, n, r))


# ---------------------------------------------------------------- TTLinear


@pytest.mark.parametrize("n_cores,shape", [(2, (48, 80)), (3, (96, 160)), (4, (64, 144))])
def test_from_dense_exact_at_full_rank(n_cores, shape):
    W, b = torch.randn(*shape), torch.randn(shape[1])
    layer = TTLinear.from_dense(W, b, n_cores=n_cores)
    assert layer.ranks == full_ranks(layer.in_modes, layer.out_modes)
    assert rel_err(layer.to_dense(), W) < 1e-5
    torch.testing.assert_close(layer.bias.detach(), b)


def test_forward_matches_dense_for_random_shapes():
    gen = torch.Generator().manual_seed(3)
    for trial in range(12):
        K = int(torch.randint(2, 5, (1,), generator=gen))
        m = torch.randint(1, 6, (K,), generator=gen).tolist()
        n = torch.randint(1, 6, (K,), generator=gen).tolist()
        full = full_ranks(m, n)
        r = [1] + [int(torch.randint(1, f + 1, (1,), generator=gen)) for f in full[1:-1]] + [1]
        layer = TTLinear(math.prod(m), math.prod(n), in_modes=m, out_modes=n, ranks=r)
        with torch.no_grad():
            layer.bias.normal_()
        W = layer.to_dense().double()
        for lead in [(), (4,), (2, 3), (2, 2, 3)]:
            x = torch.randn(*lead, math.prod(m))
            y = layer(x)
            ref = x.double() @ W + layer.bias.double()
            assert y.shape == ref.shape and y.dtype == torch.float32
            assert rel_err(y, ref) < 1e-5, (m, n, r, lead)


def test_gradients_reach_every_core():
    torch.manual_seed(0)
    layer = TTLinear(96, 160, max_rank=4)
    dense_path = TTLinear(32, 64, max_rank=16)
    assert dense_path.plan.uses_dense(64)
    emb = TTEmbedding(120, 24, max_rank=4)
    cases = [
        (layer, lambda: layer(torch.randn(3, 96))),
        (layer, lambda: layer(torch.randn(3, 96), rank_to_mask(torch.tensor([1, 2, 4]), 4))),
        (dense_path, lambda: dense_path(torch.randn(64, 32))),
        (emb.tt, lambda: emb(torch.randint(0, 120, (5,)))),
        (emb.tt, lambda: emb.attend(torch.randn(5, 24))),
    ]
    for module, forward in cases:
        module.zero_grad(set_to_none=True)
        forward().square().sum().backward()
        assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in module.cores)


def test_masked_gradients_match_reference():
    """The masked chain scales states in place; its core and mask gradients must be exact."""
    m, n, r = (2, 3, 2), (3, 2, 2), (1, 3, 4, 1)
    for mask_needs_grad in (False, True):
        cores = [c.requires_grad_() for c in random_cores(m, n, r, seed=5)]
        ref_cores = [c.detach().clone().requires_grad_() for c in cores]
        x = torch.randn(4, 12, dtype=torch.float64)
        mask = torch.rand(4, 5, dtype=torch.float64, requires_grad=mask_needs_grad)
        ref_mask = mask.detach().clone().requires_grad_(mask_needs_grad)
        weights = torch.randn(4, 12, dtype=torch.float64)
        (tt_matmul(x, cores, plan_contraction(m, n, r, order=(1, 0, 2)), mask) * weights).sum().backward()
        ref = torch.stack([x[t] @ tt_to_dense(scaled_cores(ref_cores, ref_mask[t])) for t in range(4)])
        (ref * weights).sum().backward()
        for c, rc in zip(cores, ref_cores):
            torch.testing.assert_close(c.grad, rc.grad)
        if mask_needs_grad:
            torch.testing.assert_close(mask.grad, ref_mask.grad)


def scaled_cores(cores, scale):
    """Cores with each internal bond's channels scaled (differentiably) by scale[:r]."""
    return [c * scale[: c.shape[-1]] if k < len(cores) - 1 else c for k, c in enumerate(cores)]


def test_init_variance_matches_lecun():
    torch.manual_seed(0)
    stds = [TTLinear(768, 3072, max_rank=8).to_dense().std().item() for _ in range(4)]
    assert abs(sum(stds) / 4 * math.sqrt(768) - 1) < 0.15


def test_error_monotone_in_rank_and_rel_tol_respected():
    torch.manual_seed(0)
    # A matrix with decaying spectrum, like trained weights.
    U, _ = torch.linalg.qr(torch.randn(96, 96))
    V, _ = torch.linalg.qr(torch.randn(160, 96))
    W = (U * torch.exp(-torch.arange(96) / 10.0)) @ V.T
    errors = [rel_err(TTLinear.from_dense(W, max_rank=r).to_dense(), W) for r in (64, 32, 16, 8, 4, 2, 1)]
    assert errors[0] < 1e-5
    assert all(a <= b + 1e-7 for a, b in zip(errors, errors[1:])) and errors[-1] > 0.1
    previous = None
    for tol in (0.01, 0.05, 0.2, 0.5):
        layer = TTLinear.from_dense(W, rel_tol=tol)
        assert rel_err(layer.to_dense(), W) <= tol
        if previous is not None:
            assert all(a <= b for a, b in zip(layer.ranks, previous))
        previous = layer.ranks


def test_round_truncates_keeps_bias_and_refreshes_plan():
    torch.manual_seed(0)
    layer = TTLinear(96, 160, max_rank=16)
    with torch.no_grad():
        layer.bias.normal_()
    bias = layer.bias.detach().clone()
    before, plan = layer.to_dense().detach(), layer.plan
    assert layer.plan is plan  # cached, not rebuilt per access
    x = torch.randn(4, 96)
    layer(x)
    assert layer.plan is plan
    error = layer.round_(max_rank=4)
    assert max(layer.ranks) == 4 and layer.plan.ranks == layer.ranks
    assert error == pytest.approx(rel_err(layer.to_dense(), before), rel=1e-4)
    assert torch.equal(layer.bias.detach(), bias)
    assert rel_err(layer(x), x @ layer.to_dense() + bias) < 1e-5
    assert layer.round_(rel_tol=0.0) < 1e-5  # already representable: nothing lost, no growth
    assert max(layer.ranks) <= 4
    with pytest.raises(ValueError, match="max_rank and/or rel_tol"):
        layer.round_()


def test_flops_and_ranks_properties():
    layer = TTLinear(768, 3072, max_rank=8)
    assert layer.ranks == (1, 8, 8, 1)
    assert layer.flops(1) == layer.plan.flops_per_token  # bias add excluded
    assert layer.flops(5) == 5 * layer.flops(1)
    assert "ranks=(1, 8, 8, 1)" in repr(layer)
    small = TTLinear(8, 8, max_rank=100, bias=False)
    assert small.ranks == full_ranks(small.in_modes, small.out_modes)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"ranks\[1\] \(bond 1\) must be in \[1, 16\]"):
        TTLinear(16, 16, n_cores=2, in_modes=(4, 4), out_modes=(4, 4), ranks=(1, 17, 1))
    with pytest.raises(ValueError, match="ranks must have length 4"):
        TTLinear(64, 64, ranks=(1, 4, 1))
    with pytest.raises(ValueError, match="in_modes must be positive and multiply to 64"):
        TTLinear(64, 64, in_modes=(4, 4, 5))
    with pytest.raises(ValueError, match="dimension 127"):
        TTLinear(127, 64)
    with pytest.raises(ValueError, match="max_rank"):
        TTLinear(64, 64, max_rank=0)
    with pytest.raises(ValueError, match="not both"):
        TTLinear.from_dense(torch.randn(64, 64), ranks=(1, 4, 4, 1), max_rank=4)
    with pytest.raises(ValueError, match=r"rel_tol must be in \[0, 1\)"):
        TTLinear.from_dense(torch.randn(64, 64), rel_tol=1.5)
    with pytest.raises(ValueError, match=r"ranks\[2\] \(bond 2\)"):
        TTLinear.from_dense(torch.randn(64, 64), ranks=(1, 4, 100, 1))


# ---------------------------------------------------------------- TTEmbedding


def test_embedding_lookup_and_attend_match_dense():
    torch.manual_seed(0)
    emb = TTEmbedding(1000, 48, max_rank=6)
    table = emb.to_dense()
    assert table.shape == (1000, 48)
    for shape in [(), (7,), (3, 5)]:
        ids = torch.randint(0, 1000, shape)
        torch.testing.assert_close(emb(ids), table[ids], rtol=1e-5, atol=1e-6)
    for lead in [(48,), (3, 48), (2, 3, 48)]:
        x = torch.randn(*lead)
        assert rel_err(emb.attend(x), x.double() @ table.double().T) < 1e-5
    ids = torch.tensor([0, 999, 123])
    torch.testing.assert_close(emb(ids), table[ids])  # digit split at both extremes


def test_embedding_from_dense_round_trip_and_flops():
    table = torch.randn(120, 24)
    emb = TTEmbedding.from_dense(table)
    assert rel_err(emb.to_dense(), table) < 1e-5
    ids = torch.tensor([[3, 119], [0, 64]])
    torch.testing.assert_close(emb(ids), table[ids], rtol=1e-4, atol=1e-5)
    n, r = emb.dim_modes, emb.ranks
    assert emb.flops_lookup(3) == 3 * sum(
        2 * math.prod(n[:k]) * r[k] * n[k] * r[k + 1] for k in range(1, len(n))
    )
    assert emb.flops_attend(1) == emb.attend_plan.flops_per_token
    emb.round_(max_rank=2)
    assert max(emb.ranks) == 2 and emb.attend_plan.ranks == emb.ranks
    x = torch.randn(2, 24)
    assert rel_err(emb.attend(x), x @ emb.to_dense().T) < 1e-5


def test_embedding_bad_input():
    with pytest.raises(ValueError, match=r"dimension 50257 .*nearby usable"):
        TTEmbedding(50257, 64)
    emb = TTEmbedding(1000, 48)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 999\]"):
        emb(torch.tensor([1000]))
    with pytest.raises(ValueError, match="integer"):
        emb(torch.tensor([1.0]))
