"""How much each layer's truncation costs the loss, per unit of discarded energy.

Discarded energy treats every weight alike; the loss does not (an attention projection's
error may cost more than an FFN's of the same energy). For each layer alone, halve its
ranks and measure the summed loss increase on calibration windows, dL; divide by the
energy that truncation discards, E: w = dL / E is the loss the layer costs per unit of
energy near where allocation will cut. The greedy allocator then prices a singular value
s at w * s^2. A truncation that does not raise the loss gets the smallest positive
weight measured (it is cheap, but not free), so every layer still orders its own values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qtf_edge.compress.spectra import LayerSpectrum
from qtf_edge.evaluate import windows_loss


def layer_sensitivity(model, spectra: list[LayerSpectrum],
                      truncate: Callable[[str, tuple[int, ...]], None], ranks: dict,
                      windows: list[list[int]], batch_size: int = 8) -> dict[str, float]:
    """{layer name: loss increase per unit of discarded energy} at half of `ranks`;
    truncate(name, ranks) sets a layer's cores the way compression will."""
    device = next(model.parameters()).device
    base, _ = windows_loss(model, windows, batch_size=batch_size, device=device)
    measured = {}
    for spectrum in spectra:
        layer = model.get_submodule(spectrum.name)
        kept = list(layer.cores)
        half = tuple(max(1, r // 2) for r in ranks[spectrum.name])
        truncate(spectrum.name, half)
        loss, _ = windows_loss(model, windows, batch_size=batch_size, device=device)
        with torch.no_grad():
            layer.cores = torch.nn.ParameterList(kept)
        energy = spectrum.discarded(half)
        measured[spectrum.name] = (loss - base) / energy if energy > 0 else 0.0
    floor = min((w for w in measured.values() if w > 0), default=1.0)
    return {name: max(w, floor) for name, w in measured.items()}
