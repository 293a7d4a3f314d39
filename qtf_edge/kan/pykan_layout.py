"""One channel of a BSplineActivation as a pykan KANLayer state dict, to plot or prune it there.

BSplineActivation keeps pykan's KANLayer layout with in_dim = C, out_dim = 1; one channel
is the slice [c:c + 1] of each tensor, which is KANLayer(in_dim=1, out_dim=1, num=G, k=k),
plus pykan's mask (1 = the activation is on). pykan agrees with forward inside value_range;
outside it pykan's spline decays to 0 where forward continues it linearly.
"""

from __future__ import annotations

import torch

from qtf_edge.kan.bspline import BSplineActivation, check_int_in_range


def pykan_state_dict(activation: BSplineActivation, channel: int) -> dict[str, torch.Tensor]:
    """State dict for kan.KANLayer.KANLayer(in_dim=1, out_dim=1, num=G, k=k).load_state_dict."""
    check_int_in_range(channel, (0, activation.channels - 1), "channel")
    one = slice(channel, channel + 1)
    state = {name: getattr(activation, name)[one].detach().clone()
             for name in ("grid", "coef", "scale_base", "scale_sp")}
    state["mask"] = torch.ones_like(state["scale_sp"])
    return state
