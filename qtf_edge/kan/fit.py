"""Least-squares B-spline fits of a per-channel function (e.g. a DARUAN), with measured error.

Fit. Channel c gets a uniform grid of G segments on [low_c, high_c] (spacing h_c). In
u = (x - low_c) / h_c the knots are the integers -k .. G + k for EVERY channel, so at fit
samples u_s (samples_per_segment midpoints of equal cells per segment) the design matrix
A[s, j] = B_j(u_s) is one (S, G + k) matrix for all channels: built once, in float64, by
scipy.interpolate.BSpline.design_matrix, and a single lstsq solves
    min_coef || A coef[c] - f_c(low_c + u_s h_c) ||_2   for all C channels at once
(C right-hand sides). scale_base = 0 and scale_sp = 1, so the module is the spline alone.
With at least k + 1 samples in every segment the spline is pinned down on each segment,
so A has full column rank and the fit is unique.

Error. Measured on a separate, denser CHECK grid: CHECKS_PER_SEGMENT = 256 points per
segment, at the midpoints of equal cells, evaluated THROUGH the returned module's forward
(float32, as deployed) against the function. A check point u = (2j + 1) / 512 per segment
is never a fit sample (2m + 1) / (2 s) unless s is a multiple of 256, so the check is not
the fit's own residual. FitError reports per channel:
- max_abs: the max over the check grid of |spline - function|;
- rms: the root mean square over the check grid (the error's RMS over the range);
- max_step: the largest change of the error between neighbouring check points.
Why max_abs (plus a slack) bounds the error at a fresh x inside the range: every x is
within delta / 2 of a check point (delta = h / 256, the first and last check points are
delta / 2 from the ends), and the error e = spline - function is smooth at that scale: the
spline is a degree-k polynomial per segment and the function is assumed smooth (a DARUAN
is a low-frequency trigonometric polynomial), so e' changes over a segment, 256 spacings,
and over one spacing e moves by about delta |e'|, which is what neighbouring check points
measure (the curvature term is (1/512)^2 of e's change over a segment: negligible; at a
knot e' is continuous for k >= 2 and, for k = 1, jumps between two slopes that both are
measured). Hence |e(x)| <= max_abs + max_step / 2 =: bound. The float32 rounding of
forward and function (a few ulps, not smooth) differs at a fresh x, and is covered by the
same slack: max_step includes the rounding's jumps between neighbours, which is why the
slack matters where the fit is close to float32 precision (without it, tests find fresh
points up to 1.2 x max_abs there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.interpolate import BSpline

from qtf_edge.kan.bspline import BSplineActivation, check_int_in_range, uniform_grid

CHECKS_PER_SEGMENT = 256
CHECK_ROWS_PER_CHUNK = 4096  # bounds memory at (4096, C) float64 errors however large G * 256 is


@dataclass(frozen=True)
class FitError:
    """Error of a fitted spline against its function on the check grid: (C,) float64 tensors."""

    max_abs: torch.Tensor
    rms: torch.Tensor
    max_step: torch.Tensor

    @property
    def bound(self) -> torch.Tensor:
        """(C,) bound on |spline - function| at any x inside the range (module docstring)."""
        return self.max_abs + self.max_step / 2

    @property
    def worst_max(self) -> float:
        return float(self.max_abs.max())

    @property
    def worst_bound(self) -> float:
        return float(self.bound.max())

    @property
    def overall_rms(self) -> float:
        """RMS over all channels and check points (every channel has as many)."""
        return float(self.rms.square().mean().sqrt())


def fit_bspline(function: Callable[[torch.Tensor], torch.Tensor], low: torch.Tensor,
                high: torch.Tensor, grid_size: int = 16, order: int = 3,
                samples_per_segment: int = 32) -> tuple[BSplineActivation, FitError]:
    """Fit a BSplineActivation to function ((S, C) -> (S, C)) on [low_c, high_c] per channel."""
    _check_range(low, high)
    channels = low.shape[0]
    activation = BSplineActivation(channels, grid_size, order).to(low.device)
    check_int_in_range(samples_per_segment, (order + 1, None), "samples_per_segment")
    with torch.no_grad():
        activation.grid.copy_(uniform_grid(low, high, grid_size, order))
        u = (torch.arange(grid_size * samples_per_segment, dtype=torch.float64) + 0.5) / samples_per_segment
        design = BSpline.design_matrix(u.numpy(), np.arange(-order, grid_size + order + 1.0), order)
        design = torch.from_numpy(design.toarray()).to(low.device)  # (S, G + k)
        targets = _call(function, _points(u.to(low.device), low, high, grid_size)).double()
        coef = torch.linalg.lstsq(design, targets).solution  # (G + k, C)
        activation.coef.copy_(coef.T[:, None, :])
        return activation, _measure(activation, function, low, high, grid_size)


def _check_range(low: torch.Tensor, high: torch.Tensor) -> None:
    for name, value in (("low", low), ("high", high)):
        if not isinstance(value, torch.Tensor) or value.ndim != 1 or not value.is_floating_point():
            got = (f"shape {tuple(value.shape)}, {value.dtype}" if isinstance(value, torch.Tensor)
                   else type(value).__name__)
            raise ValueError(f"{name} must be a 1-D float tensor (C,), got {got}")
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} must be finite")
    if high.shape != low.shape or not low.shape[0]:
        raise ValueError(f"high must have the shape of low, (C,) with C >= 1, got {tuple(high.shape)} "
                         f"and {tuple(low.shape)}")
    if not (low < high).all():
        raise ValueError("low must be < high in every channel")


def _points(u: torch.Tensor, low: torch.Tensor, high: torch.Tensor, grid_size: int) -> torch.Tensor:
    """x = low + u h per channel for u (S,) in [0, G]: (S, C) float32, the dtype deployed."""
    spacing = (high.double() - low.double()) / grid_size
    return (low.double() + u[:, None] * spacing).float()


def _call(function, x: torch.Tensor) -> torch.Tensor:
    y = function(x)
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        raise ValueError(f"function must map (S, C) to (S, C), got {getattr(y, 'shape', type(y))} "
                         f"for {tuple(x.shape)}")
    return y


def _measure(activation: BSplineActivation, function, low: torch.Tensor, high: torch.Tensor,
             grid_size: int) -> FitError:
    """FitError on the check grid, in chunks of rows (one extra row each, for the steps)."""
    rows = grid_size * CHECKS_PER_SEGMENT
    u = (torch.arange(rows, dtype=torch.float64, device=low.device) + 0.5) / CHECKS_PER_SEGMENT
    max_abs = sum_squares = max_step = torch.zeros(low.shape[0], dtype=torch.float64, device=low.device)
    for start in range(0, rows, CHECK_ROWS_PER_CHUNK):
        x = _points(u[start:start + CHECK_ROWS_PER_CHUNK + 1], low, high, grid_size)
        error = activation(x).double() - _call(function, x).double()
        own = error[:CHECK_ROWS_PER_CHUNK]  # the extra row is the next chunk's first
        max_abs = torch.maximum(max_abs, own.abs().amax(dim=0))
        sum_squares = sum_squares + own.square().sum(dim=0)
        if len(error) > 1:
            max_step = torch.maximum(max_step, error.diff(dim=0).abs().amax(dim=0))
    return FitError(max_abs=max_abs, rms=(sum_squares / rows).sqrt(), max_step=max_step)
