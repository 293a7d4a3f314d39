"""The deploy form: fold circuits into constant unitaries, fit B-splines to DARUANs.

`deploy_model` builds a fresh QTensorFormer from the deploy-form config and fills it
from the simulated model's state dict: every parameter both forms share is copied as it
is; each VariationalCircuit's angles become its folded unitary; each DARUAN's
parameters become the grid and coefficients of its fitted B-spline. Building from the
config (rather than swapping modules in place) is what makes the result load back from
its run folder exactly as it was made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from qtf_edge.kan import BSplineActivation, FitError, fit_bspline
from qtf_edge.model import QTensorFormer
from qtf_edge.quantum import DARUAN, VariationalCircuit
from qtf_edge.runs import resize_tt_cores_to

DEFAULT_MARGIN = 0.1  # widen each channel's calibration range by this share of it, each side
MIN_SPAN = 0.1  # a channel whose inputs barely vary still gets a range this wide


@dataclass(frozen=True)
class FittedActivation:
    name: str                  # the DARUAN's module name, e.g. blocks.0.ffn.activation
    observed: tuple[torch.Tensor, torch.Tensor]  # per-channel min / max on calibration text
    spline: BSplineActivation
    error: FitError            # over the widened range, per channel


def widened(low: torch.Tensor, high: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[low, high] grown by margin x its span on each side (spans floored at MIN_SPAN)."""
    if not 0.0 <= margin <= 10.0:
        raise ValueError(f"margin must be in [0, 10], got {margin!r}")
    centre, span = (low + high) / 2, (high - low).clamp_min(MIN_SPAN)
    half = span * (0.5 + margin)
    return centre - half, centre + half


@torch.no_grad()
def fit_activations(model: nn.Module, ranges: dict[str, tuple[torch.Tensor, torch.Tensor]],
                    grid_size: int, order: int, margin: float = DEFAULT_MARGIN
                    ) -> list[FittedActivation]:
    """A least-squares B-spline for every DARUAN, on its widened calibration range."""
    fitted = []
    for name, module in model.named_modules():
        if not isinstance(module, DARUAN):
            continue
        if name not in ranges:
            raise ValueError(f"no calibration range for {name}: the calibration text never "
                             f"reached it")
        low, high = widened(*ranges[name], margin)
        spline, error = fit_bspline(module, low, high, grid_size=grid_size, order=order)
        fitted.append(FittedActivation(name, ranges[name], spline, error))
    return fitted


def has_simulation(model: nn.Module) -> bool:
    """Whether the model simulates anything: circuits to fold or DARUANs to replace."""
    return any(isinstance(m, (DARUAN, VariationalCircuit)) for m in model.modules())


@torch.no_grad()
def deploy_model(model: QTensorFormer, fitted: list[FittedActivation], grid_size: int,
                 order: int) -> QTensorFormer:
    """The deploy form of a simulated model, in eval mode, on the model's device."""
    config = dataclasses.replace(model.config, form="deploy", spline_grid=grid_size,
                                 spline_order=order)
    splines = {f.name: f.spline for f in fitted}
    state = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, VariationalCircuit):
            state[prefix + "folded_unitary"] = module.unitary().detach()
        elif isinstance(module, DARUAN):
            if name not in splines:
                raise ValueError(f"no fitted spline for {name}")
            state.update({prefix + k: v for k, v in splines[name].state_dict().items()})
        else:
            state.update({prefix + k: v for k, v in module.state_dict(keep_vars=False).items()
                          if "." not in k})  # direct members only; children add their own
    device = next(model.parameters()).device
    deploy = QTensorFormer(config)
    resize_tt_cores_to(deploy, state)  # ranks a budget or compress lowered
    deploy.load_state_dict(state, strict=True)
    return deploy.to(device).eval()
