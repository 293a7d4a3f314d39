"""Tests of the B-spline KAN activations (qtf_edge.kan): maths, fits, pykan layout, export."""

import math

import pytest
import torch
from kan.KANLayer import KANLayer
from scipy.interpolate import BSpline
from torch import nn

from qtf_edge.kan import (GRID_SIZE_RANGE, ORDER_RANGE, BSplineActivation, fit_bspline,
                          pykan_state_dict)
from qtf_edge.kan.bspline import uniform_grid
from qtf_edge.quantum import DARUAN

EPS32 = torch.finfo(torch.float32).eps

# Dyadic ranges: with G = 8 every h, 1 / h and low / h is a power of two times a small
# integer, so for x on a 2^-12 lattice u = (x - low) / h is exact in float32, and forward's
# only rounding is in the table and Horner.
DYADIC_LOW = torch.tensor([-1.0, -2.0, 0.0, -4.0])
DYADIC_HIGH = torch.tensor([1.0, 2.0, 4.0, 0.0])


def random_activation(grid_size=8, order=3, low=DYADIC_LOW, high=DYADIC_HIGH):
    """Random coef, scale_base and scale_sp on a uniform grid per channel."""
    activation = BSplineActivation(len(low), grid_size, order)
    with torch.no_grad():
        activation.grid.copy_(uniform_grid(low, high, grid_size, order))
        activation.coef.normal_()
        activation.scale_base.normal_()
        activation.scale_sp.normal_()
    return activation


def lattice(low: float, high: float, count: int) -> torch.Tensor:
    """count points of the 2^-12 lattice spread over [low, high], both ends included."""
    points = torch.arange(round(low * 4096), round(high * 4096) + 1) / 4096
    return points[torch.linspace(0, len(points) - 1, count).round().long()]


def scipy_spline(activation: BSplineActivation, channel: int) -> BSpline:
    """scale_sp * spline of one channel, in float64, from the same knots and coefficients."""
    coef = (activation.scale_sp[channel, 0] * activation.coef[channel, 0]).detach().double()
    return BSpline(activation.grid[channel].double().numpy(), coef.numpy(), activation.order)


def silu64(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(x.double())


def float32_tolerance(activation: BSplineActivation, x: torch.Tensor) -> torch.Tensor:
    """Bound on forward's float32 rounding at exact u, per element.

    The table holds sums of k + 1 products P[p, m] coef (|P| <= 1, entries like 1/6 rounded)
    and Horner adds k roundings with |t| <= 1 inside: each a few eps times the size of the
    terms, at most (k + 1) max|scale_sp * coef|. Outside, the linear rows add t * slope
    with |t| up to |u| + 1; scale_base * silu adds eps times its own size.
    """
    k = activation.order
    size = ((k + 1) * (activation.scale_sp * activation.coef[:, 0]).abs().amax(dim=1)).detach()
    low, high = activation.value_range()
    u_beyond = ((low - x).clamp(min=0) + (x - high).clamp(min=0)) * activation.grid_size / (high - low)
    base = (activation.scale_base[:, 0].detach().double() * silu64(x)).abs()
    return 8 * (k + 1) * EPS32 * size * (1 + u_beyond) + 4 * EPS32 * base


# --- forward: the maths ---------------------------------------------------------------

@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_forward_matches_scipy_bspline_inside_the_range(order):
    activation = random_activation(order=order)
    x = torch.stack([lattice(float(lo), float(hi), 601) for lo, hi in zip(DYADIC_LOW, DYADIC_HIGH)], 1)
    with torch.no_grad():
        y = activation(x).double()
    for c in range(activation.channels):
        expected = torch.from_numpy(scipy_spline(activation, c)(x[:, c].double().numpy()))
        expected = expected + activation.scale_base[c, 0].double().detach() * silu64(x[:, c])
        error = (y[:, c] - expected).abs()
        assert (error <= float32_tolerance(activation, x)[:, c]).all(), float(error.max())


def test_outside_the_range_the_spline_continues_linearly_with_the_end_value_and_slope():
    activation = random_activation()
    low, high = activation.value_range()
    spacing = (high - low) / activation.grid_size
    offsets = torch.tensor([1 / 64, 0.5, 1.0, 3.0, 40.0])  # in units of h, on the 2^-12 lattice
    for side, end, direction in (("low", low, -1.0), ("high", high, 1.0)):
        x = (end + direction * offsets[:, None] * spacing).requires_grad_()
        y = activation(x)
        (slope,) = torch.autograd.grad(y.sum(), x)
        for c in range(activation.channels):
            spline = scipy_spline(activation, c)
            at_end = float(end[c])
            end_value, end_slope = float(spline(at_end)), float(spline.derivative()(at_end))
            base = float(activation.scale_base[c, 0].detach())
            x64 = x[:, c].detach().double().requires_grad_()
            expected = end_value + end_slope * (x64 - at_end) + base * silu64(x64)
            tolerance = float32_tolerance(activation, x.detach())[:, c]
            assert ((y[:, c].detach().double() - expected.detach()).abs() <= tolerance).all(), side
            # The slope seen by autograd is the end slope (plus silu's): continuous at the
            # end. Same rounding as the values per unit of x: the spline part is divided by
            # h, and silu' is at most 1.1.
            (expected_slope,) = torch.autograd.grad(expected.sum(), x64)
            at_end_tolerance = float32_tolerance(activation, end.expand(1, -1))[0, c]
            slope_tolerance = at_end_tolerance / spacing[c] + 8 * EPS32 * 1.1 * abs(base)
            assert ((slope[:, c].double() - expected_slope).abs() <= slope_tolerance).all(), side


def test_default_activation_is_the_zero_function_on_a_uniform_grid_over_minus_one_one():
    activation = BSplineActivation(3, grid_size=4, order=2)
    low, high = activation.value_range()
    assert torch.equal(low, -torch.ones(3)) and torch.equal(high, torch.ones(3))
    assert torch.allclose(activation.grid[0], torch.arange(-2, 7) * 0.5 - 1.0)
    assert torch.equal(activation(torch.linspace(-5, 5, 30)[:, None].expand(30, 3)), torch.zeros(30, 3))
    assert repr(activation) == "BSplineActivation(channels=3, grid_size=4, order=2)"


def test_nan_input_gives_nan_and_leaves_other_elements_alone():
    activation = random_activation()
    x = torch.zeros(2, 4)
    x[0, 1] = float("nan")
    y = activation(x)
    assert torch.isnan(y[0, 1]) and not torch.isnan(y[0, [0, 2, 3]]).any()
    assert torch.equal(y[0, [0, 2, 3]], y[1, [0, 2, 3]])


def test_autocast_bf16_runs_the_spline_in_float32():
    activation = random_activation()
    x = (torch.randn(16, 4) * 2).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = activation(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, activation(x.float()))


# --- autograd and the inference cache ----------------------------------------------------

def test_gradients_of_input_coef_and_scales_match_finite_differences():
    activation = random_activation(grid_size=4).double()
    x = torch.randn(6, 4, dtype=torch.float64) * 3  # inside and outside every range
    names = ("coef", "scale_sp", "scale_base")
    params = tuple(getattr(activation, name).detach().clone().requires_grad_() for name in names)

    def forward(x, *values):
        return torch.func.functional_call(activation, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(forward, (x.requires_grad_(), *params))
    forward(x, *params).square().sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in params)


def test_inference_reuses_the_table_and_picks_up_an_in_place_update(monkeypatch):
    activation = random_activation()
    builds = []
    build = activation._segment_polynomials
    monkeypatch.setattr(activation, "_segment_polynomials", lambda: builds.append(1) or build())
    x = torch.linspace(-1, 1, 9)[:, None].expand(9, 4)
    with torch.no_grad():
        first, again = activation(x), activation(x)
        assert len(builds) == 1 and torch.equal(first, again)
        activation.coef[:, 0, :].add_(1.0)  # an optimizer step: in place, version bumped
        updated = activation(x)
    assert len(builds) == 2
    assert not torch.equal(updated, first)
    assert torch.equal(updated, activation(x).detach())  # autograd on: always rebuilt


# --- export -------------------------------------------------------------------------------

# Every op the exported graph may hold: elementwise arithmetic, clamp/floor, one
# index_select, views, and the parameter-only table build (matmul, cat, ...). No loops
# (higher-order ops), no .item() (_local_scalar_dense), no data-dependent shapes (nonzero).
EXPORTABLE_OPS = {
    "add.Tensor", "addcmul.default", "arange.default", "cat.default", "clamp_.default",
    "contiguous.default", "detach.default", "flatten.using_ints", "floor_.default",
    "index_select.default", "linear.default", "matmul.default", "mul.Tensor", "nan_to_num.default",
    "neg.default", "new_zeros.default", "numpy_T.default", "reciprocal.default", "reshape.default",
    "select.int", "silu.default", "stack.default", "sub.Tensor", "sum.dim_IntList",
    "sym_size.int", "to.dtype", "unfold.default", "unsqueeze.default", "view.default",
    "_assert_tensor_metadata.default",
}


def test_export_gives_a_flat_graph_of_simple_ops_with_dynamic_batch_and_sequence():
    activation = random_activation()
    model = nn.Sequential(nn.Linear(4, 4), activation).eval()
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    program = torch.export.export(model, (torch.randn(2, 5, 4),), dynamic_shapes=(dims,))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert all(isinstance(t, torch._ops.OpOverload) and t.namespace == "aten" for t in targets), targets
    assert {f"{t._opname}.{t._overloadname}" for t in targets} <= EXPORTABLE_OPS
    x = torch.randn(3, 11, 4) * 4  # inside and outside the ranges
    with torch.no_grad():
        assert torch.equal(program.module()(x), model(x))


# --- pykan layout ---------------------------------------------------------------------------

def test_state_dict_has_pykan_kanlayer_layout():
    activation = BSplineActivation(5, grid_size=6, order=2)
    pykan = KANLayer(in_dim=5, out_dim=1, num=6, k=2).state_dict()
    ours = activation.state_dict()
    assert {name: v.shape for name, v in ours.items()} == {
        name: v.shape for name, v in pykan.items() if name != "mask"}
    activation.load_state_dict({name: v for name, v in pykan.items() if name != "mask"})
    assert torch.equal(activation.grid, pykan["grid"])  # pykan's own grid passes the uniform check


@pytest.mark.parametrize("order", [1, 3])
def test_pykan_kanlayer_loads_one_channel_and_agrees_inside_the_range(order):
    activation = random_activation(grid_size=8, order=order)
    low, high = activation.value_range()
    x = (low + torch.rand(500, 4) * (high - low)).contiguous()
    ours = activation(x).detach()
    for c in range(activation.channels):
        layer = KANLayer(in_dim=1, out_dim=1, num=8, k=order)
        layer.load_state_dict(pykan_state_dict(activation, c))
        theirs, *_ = layer(x[:, c:c + 1])  # (y, preacts, postacts, postspline)
        # Both round in float32: ours within float32_tolerance, and pykan's Cox-de Boor
        # recursion (ratios (x - knot) / (j h) in [0, 1], sums of k + 1 terms) by errors of
        # the same size, hence twice it (measured: under a tenth of it).
        tolerance = 2 * float32_tolerance(activation, x)[:, c]
        assert ((theirs[:, 0].double() - ours[:, c].double()).abs() <= tolerance).all()


# --- fits -----------------------------------------------------------------------------------

def random_daruan(channels: int) -> DARUAN:
    daruan = DARUAN(channels)
    with torch.no_grad():
        for parameter in daruan.parameters():
            parameter.normal_()
    return daruan


def fresh_errors(activation, function, low, high, samples=4000) -> torch.Tensor:
    """max |spline - function| per channel at fresh uniform random points inside the range."""
    x = (low.double() + torch.rand(samples, len(low), dtype=torch.float64) * (high - low).double())
    x = torch.minimum(torch.maximum(x.float(), low), high)  # float32 rounding stays inside
    with torch.no_grad():
        return (activation(x).double() - function(x).double()).abs().amax(dim=0)


@pytest.mark.parametrize("function_name", ["daruan", "sin"])
def test_fit_error_bounds_fresh_points_and_is_tight(function_name):
    channels = 12
    function = random_daruan(channels) if function_name == "daruan" else torch.sin
    low, high = -3 + torch.rand(channels), 2 + torch.rand(channels)
    activation, error = fit_bspline(function, low, high, grid_size=16, order=3)
    assert torch.allclose(activation.value_range()[0], low) and torch.allclose(activation.value_range()[1], high)
    assert activation.scale_base.abs().max() == 0 and torch.equal(activation.scale_sp, torch.ones(channels, 1))
    fresh = fresh_errors(activation, function, low, high)
    assert (fresh <= error.bound).all()
    # Tight: the check grid finds the real error; fresh points come within 10% of it.
    assert (fresh >= 0.9 * error.max_abs).all()
    assert error.worst_max == float(error.max_abs.max()) and error.worst_bound >= error.worst_max
    assert 0 < error.overall_rms <= error.worst_max


def test_fit_error_of_cubic_splines_falls_like_h_to_the_fourth():
    low, high = torch.tensor([-math.pi, -1.0, 0.5]), torch.tensor([math.pi, 2.0, 4.0])
    coarse = fit_bspline(torch.sin, low, high, grid_size=8, order=3)[1].max_abs
    fine = fit_bspline(torch.sin, low, high, grid_size=16, order=3)[1].max_abs
    # Halving h divides the error by 2^4 = 16 asymptotically; 12 leaves room for G = 8 not
    # being asymptotic yet, and still fails for any lower order (2^3 = 8).
    assert (coarse / fine > 12).all(), coarse / fine
    assert (fine < 4e-5).all()  # ~ h^4 max|sin''''| / 384 for h = 2 pi / 16, the widest range


def test_fit_passes_float32_samples_of_shape_s_c_to_the_function():
    seen = []

    def function(x):
        seen.append((x.shape, x.dtype))
        return x.square()

    fit_bspline(function, torch.zeros(3), torch.ones(3), grid_size=2, order=2, samples_per_segment=4)
    assert seen[0] == (torch.Size([8, 3]), torch.float32)


# --- argument errors ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    ({"grid_size": GRID_SIZE_RANGE[0] - 1}, "grid_size"), ({"grid_size": GRID_SIZE_RANGE[1] + 1}, "grid_size"),
    ({"grid_size": 4.0}, "grid_size"), ({"order": ORDER_RANGE[0] - 1}, "order"),
    ({"order": ORDER_RANGE[1] + 1}, "order"), ({"order": True}, "order"), ({"channels": 0}, "channels"),
])
def test_bad_sizes_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be an int"):
        BSplineActivation(**{"channels": 2, **kwargs})


def test_non_uniform_grid_is_refused_at_load_and_by_check_grid():
    activation = BSplineActivation(2, grid_size=4, order=3)
    state = activation.state_dict()
    state["grid"] = state["grid"].clone()
    state["grid"][1, 5] += 0.01  # one interior knot moved: pykan's adaptive grids look like this
    with pytest.raises(ValueError, match="^grid must be uniform per channel.*channel 1"):
        activation.load_state_dict(state)
    with torch.no_grad():
        activation.grid.copy_(state["grid"])
    with pytest.raises(ValueError, match="^grid must be uniform per channel"):
        activation.check_grid()


@pytest.mark.parametrize("low, high, name", [
    (torch.zeros(2), torch.tensor([1.0, 0.0]), "low must be < high"),
    (torch.zeros(2), torch.ones(3), "high must have the shape of low"),
    (torch.zeros(2, 1), torch.ones(2, 1), "low must be a 1-D float tensor"),
    (torch.tensor([0.0, float("nan")]), torch.ones(2), "low must be finite"),
])
def test_bad_fit_ranges_raise_naming_the_argument(low, high, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        fit_bspline(torch.sin, low, high)


def test_bad_fit_sampling_and_function_shapes_raise():
    with pytest.raises(ValueError, match="^samples_per_segment must be an int >= 4"):
        fit_bspline(torch.sin, torch.zeros(2), torch.ones(2), order=3, samples_per_segment=3)
    with pytest.raises(ValueError, match=r"^function must map \(S, C\) to \(S, C\)"):
        fit_bspline(lambda x: x.sum(-1), torch.zeros(2), torch.ones(2))


def test_pykan_state_dict_refuses_a_channel_out_of_range():
    with pytest.raises(ValueError, match=r"^channel must be an int in \[0, 2\]"):
        pykan_state_dict(BSplineActivation(3), 3)


def test_forward_refuses_the_wrong_channel_count():
    with pytest.raises(ValueError, match=r"^x must have shape \(\.\.\., 3\)"):
        BSplineActivation(3)(torch.zeros(2, 4))

