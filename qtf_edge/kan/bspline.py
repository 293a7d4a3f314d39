"""B-spline KAN activations: one learnable spline per channel, (..., C) -> (..., C).

The classical replacement for DARUAN in the deploy form. State and function are those of
pykan's KANLayer (pykan 0.2.8) with in_dim = C and out_dim = 1, one activation per channel:

    y_c(x) = scale_base[c] * silu(x) + scale_sp[c] * spline_c(x)
    spline_c(x) = sum_j coef[c, 0, j] B_j(x),   j = 0 .. G + k - 1,

where B_j are the degree-k B-splines ("order k" in pykan) on the extended knot vector
grid[c] of G + 2k + 1 points: a grid of G segments on [low_c, high_c], plus k more knots at
the same spacing beyond each end. On the interior range [grid[c, k], grid[c, G + k]]
(value_range) the B-splines sum to one and spline_c is a C^(k-1) piecewise polynomial.
Outside it pykan's basis loses its partition of unity and decays to 0 at the outer knots;
HERE INSTEAD the spline part is continued linearly with its value and slope at the nearer
end, so an input a little outside the fitted range gets a continuous, unsurprising value.

Evaluation (forward) needs a UNIFORM grid per channel (spacing h_c; checked when a state
dict is loaded, and by check_grid). In u = (x - low_c) / h_c every knot is an integer, so
segment i = [i, i + 1] carries the same k + 1 basis pieces, only shifted:
    spline_c = sum_{m=0..k} coef[c, 0, i + m] b_m(t),   t = u - i in [0, 1],
with b_m the pieces of the cardinal B-spline. Writing b_m(t) = sum_p P[p, m] t^p (P is a
constant (k+1) x (k+1) matrix, read off scipy's PPoly.from_spline), segment i is the
polynomial with power coefficients a[c, i] = scale_sp[c] * P @ coef[c, 0, i:i+k+1]. Two
more rows per channel hold the linear continuations as polynomials of the same form:
segment -1 (u < 0) and segment G (u >= G), with only the constant and linear coefficients
nonzero. This (C, G + 2, k+1) table depends on the parameters only: cached at inference,
rebuilt under autograd so that fine-tuning trains coef, scale_sp and scale_base.
Per element, forward computes
    u = x / h_c - low_c / h_c,  i = clamp(floor(u), -1, G),  t = u - i,
gathers row (c, i) of the table (one index_select) and evaluates it by Horner in t, then
adds scale_base * silu(x). Inside the range t is in [0, 1]; outside it only the linear
row's two coefficients are nonzero, so Horner reduces to value + slope * (u - end): the
continuation costs no op per element (clamping u and adding the end slope times u minus
the clamped u, picked by a where, would cost five, the where alone as much as Horner).
Only elementwise ops, one gather and no data-dependent control flow: the forward traces
into a flat graph with torch.export, with dynamic leading dims.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.interpolate import BSpline, PPoly
from torch import nn

from qtf_edge.param_cache import ParameterCache
from qtf_edge.quantum.precision import float32_simulation

GRID_SIZE_RANGE = (1, 256)
ORDER_RANGE = (1, 5)


def check_int_in_range(value, bounds: tuple[int, int | None], name: str) -> None:
    """ValueError unless value is an int (not a bool) in [low, high] (high None: no upper bound)."""
    low, high = bounds
    if (isinstance(value, bool) or not isinstance(value, int) or value < low
            or (high is not None and value > high)):
        expected = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {'in ' if high is not None else ''}{expected}, got {value!r}")


def uniform_grid(low: torch.Tensor, high: torch.Tensor, grid_size: int, order: int) -> torch.Tensor:
    """Extended knot vectors (C, G + 2k + 1): G segments on [low_c, high_c], k more each side.

    Knots are computed in float64 as low + (j - k) h and rounded once, so every spacing is
    h up to the rounding of the knots themselves.
    """
    low, high = low.double(), high.double()
    steps = torch.arange(-order, grid_size + order + 1, dtype=torch.float64, device=low.device)
    return (low[:, None] + steps * ((high - low) / grid_size)[:, None]).float()


def check_uniform_grid(grid: torch.Tensor, grid_size: int, order: int, name: str = "grid") -> None:
    """ValueError unless grid is (C, G + 2k + 1), finite, increasing, with equal spacing per channel."""
    knots = grid_size + 2 * order + 1
    if grid.ndim != 2 or grid.shape[1] != knots:
        raise ValueError(f"{name} must have shape (channels, {knots}), got {tuple(grid.shape)}")
    if not torch.isfinite(grid).all():
        raise ValueError(f"{name} must be finite")
    spacing = grid.double().diff(dim=1)
    mean_spacing = (grid[:, -1].double() - grid[:, 0].double()) / (knots - 1)
    if not (mean_spacing > 0).all():
        raise ValueError(f"{name} must increase along every channel")
    # Each knot is a float rounded once (uniform_grid) or a few times (torch.linspace,
    # then pykan's extend_grid subtracting h k times): a spacing is off by at most about
    # 2(k + 1) ulps of the largest knot. Twice that still is rounding; beyond, the grid is
    # genuinely non-uniform, and forward's uniform-segment evaluation would be wrong.
    tolerance = 4 * (order + 1) * torch.finfo(grid.dtype).eps * grid.double().abs().amax(dim=1)
    deviation = (spacing - mean_spacing[:, None]).abs().amax(dim=1)
    bad = torch.nonzero(deviation > tolerance).flatten()
    if bad.numel():
        channel = int(bad[0])
        raise ValueError(f"{name} must be uniform per channel (equal knot spacing), channel "
                         f"{channel} has spacings in [{float(spacing[channel].min()):.6g}, "
                         f"{float(spacing[channel].max()):.6g}]")


def power_basis_matrix(order: int) -> torch.Tensor:
    """P (k+1, k+1): on a segment, basis piece m (weight of coef[i + m]) is sum_p P[p, m] t^p.

    On the integer knots 0 .. 2k + 1 there are k + 1 B-splines of degree k; B-spline m
    (knots m .. m + k + 1) is nonzero on the middle segment [k, k + 1], where it is the
    piece b_m. PPoly.from_spline gives the power coefficients there, in t = x - k, highest
    power first.
    """
    knots = np.arange(2 * order + 2, dtype=np.float64)
    columns = []
    for m in range(order + 1):
        unit = np.zeros(order + 1)
        unit[m] = 1.0
        columns.append(PPoly.from_spline(BSpline(knots, unit, order)).c[::-1, order])
    return torch.from_numpy(np.stack(columns, axis=1)).float()


class BSplineActivation(nn.Module):
    def __init__(self, channels: int, grid_size: int = 16, order: int = 3):
        super().__init__()
        check_int_in_range(channels, (1, None), "channels")
        check_int_in_range(grid_size, GRID_SIZE_RANGE, "grid_size")
        check_int_in_range(order, ORDER_RANGE, "order")
        self.channels, self.grid_size, self.order = channels, grid_size, order
        # pykan's KANLayer layout (in_dim = channels, out_dim = 1): the zero function on
        # [-1, 1] until fitted (coef 0, scale_base 0), with the spline at full scale.
        ones = torch.ones(channels)
        self.register_buffer("grid", uniform_grid(-ones, ones, grid_size, order))
        self.coef = nn.Parameter(torch.zeros(channels, 1, grid_size + order))
        self.scale_base = nn.Parameter(torch.zeros(channels, 1))
        self.scale_sp = nn.Parameter(torch.ones(channels, 1))
        # Not in the state dict (so it stays pykan's); buffers so that .to() moves them.
        self.register_buffer("_power_basis", power_basis_matrix(order), persistent=False)
        # Row of segment -1 of channel c in the table; int32 (index_select takes it) because
        # int64 arithmetic over (..., C) costs several times more on CPU.
        self.register_buffer("_row_offsets", (torch.arange(channels) * (grid_size + 2) + 1).int(),
                             persistent=False)
        self._polynomials_cache = ParameterCache()  # _segment_polynomials() reused at inference

    def extra_repr(self) -> str:
        return f"channels={self.channels}, grid_size={self.grid_size}, order={self.order}"

    def value_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(low (C,), high (C,)): the interior range, where the spline is pykan's."""
        return self.grid[:, self.order], self.grid[:, self.grid_size + self.order]

    def check_grid(self) -> None:
        """ValueError unless the grid is uniform per channel (forward relies on it)."""
        check_uniform_grid(self.grid, self.grid_size, self.order)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A pykan grid may have been adapted to samples (grid_eps < 1): refuse it at load,
        # since forward (and an exported graph) would silently treat it as uniform.
        grid = state_dict.get(prefix + "grid")
        if grid is not None and grid.shape == self.grid.shape:
            check_uniform_grid(grid, self.grid_size, self.order, name=prefix + "grid")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # Spline maths in float32 also under autocast (same rule as DARUAN, which this replaces):
    # bf16 has 8 bits of mantissa, too few for t in [0, 1] and a cubic's cancellations.
    @float32_simulation
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., channels) -> (..., channels)."""
        if x.ndim < 1 or x.shape[-1] != self.channels:
            raise ValueError(f"x must have shape (..., {self.channels}), got {tuple(x.shape)}")
        table, inv_spacing, shift = self._polynomials_cache.get(
            (self.coef, self.scale_sp, self.grid), self._segment_polynomials)
        u = torch.addcmul(shift, x, inv_spacing)  # (x - low) / h
        # Segment -1 and G are the linear continuations. nan_to_num: a NaN input must still
        # index a real row (it stays NaN through t). No gradient flows through a floor.
        segment = u.detach().nan_to_num(0.0).clamp_(-1, self.grid_size).floor_()
        rows = segment.int() + self._row_offsets
        coefficients = table.index_select(1, rows.flatten()).view(-1, *x.shape)  # (k+1, ..., C)
        t = u - segment
        spline = coefficients[self.order]
        for power in range(self.order - 1, -1, -1):  # Horner, k steps
            spline = torch.addcmul(coefficients[power], spline, t)
        return torch.addcmul(spline, self.scale_base[:, 0], F.silu(x))

    def _segment_polynomials(self):
        """Per-channel constants of forward, from the parameters and grid (cached at inference).

        Returns table (k+1, C * (G + 2)): column c * (G + 2) + 1 + i holds the power
        coefficients in t = u - i of segment i of channel c, scale_sp included, for i in
        -1 .. G, where segments -1 and G are the linear continuations (value and slope at
        the end, higher powers 0); power-major, so that one index_select gives each power as
        a contiguous (..., C) plane for Horner. Then 1 / h and -low / h (C,), so that
        u = x / h + (-low / h).
        """
        k, grid_size = self.order, self.grid_size
        windows = self.coef[:, 0].unfold(-1, k + 1, 1)  # (C, G, k+1): coef[c, 0, i:i+k+1]
        inner = (windows @ self._power_basis.T) * self.scale_sp[:, :, None]  # (C, G, k+1)
        low_value, low_slope = inner[:, 0, 0], inner[:, 0, 1]  # at t = 0 of segment 0
        powers = torch.arange(k + 1, dtype=inner.dtype, device=inner.device)
        high_value, high_slope = inner[:, -1].sum(-1), inner[:, -1] @ powers  # at t = 1 of segment G - 1
        zeros = inner.new_zeros(self.channels, k - 1)
        # Segment -1 has t = u + 1: value + slope * u = (value - slope) + slope * t.
        below = torch.cat((torch.stack((low_value - low_slope, low_slope), -1), zeros), -1)
        above = torch.cat((torch.stack((high_value, high_slope), -1), zeros), -1)
        table = torch.cat((below[:, None], inner, above[:, None]), 1)  # (C, G + 2, k+1)
        low, high = self.value_range()
        inv_spacing = grid_size / (high - low)
        return table.reshape(-1, k + 1).T.contiguous(), inv_spacing, -low * inv_spacing
