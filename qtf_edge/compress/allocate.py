"""Rank allocation across layers under a budget: which bonds keep how many singular values.

Greedy (the default): start every bond at its largest rank and, while the model is over
budget, lower by one the rank of the bond whose next dropped singular value s costs the
least weighted energy per unit of cost saved, w_layer * s^2 / (cost before - cost after).
Discarded energy is a sum of independent per-bond tails (spectra.py) and singular values
fall along each bond, so each step takes the cheapest error available; it is the usual
marginal-analysis heuristic for a separable, convex-ish objective (exact when each layer's
error-versus-cost curve is convex), and needs only the spectra computed once.
w_layer is 1 (plain discarded energy) or a measured sensitivity of the loss to the layer.

Uniform (the baseline it is compared with): one rank cap shared by every bond, the
largest that meets the budget.

`cost` maps (spectrum, ranks) to the layer's share of the budgeted quantity (parameters,
or FLOPs per token); the caller checks the real budget on the built model and may call
again with a tighter target (latency and energy are not sums of layer FLOPs exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from qtf_edge.compress.spectra import LayerSpectrum

Cost = Callable[[LayerSpectrum, tuple[int, ...]], float]
Ranks = dict[str, tuple[int, ...]]


def params_cost(spectrum: LayerSpectrum, ranks: tuple[int, ...]) -> float:
    return float(spectrum.params(ranks))


def total_cost(spectra: list[LayerSpectrum], ranks: Ranks, cost: Cost) -> float:
    return sum(cost(s, ranks[s.name]) for s in spectra)


def full_allocation(spectra: list[LayerSpectrum]) -> Ranks:
    """Every bond at its largest rank."""
    return {s.name: s.max_ranks for s in spectra}


def greedy_allocation(spectra: list[LayerSpectrum], target: float, cost: Cost = params_cost,
                      start: Ranks | None = None, weights: Mapping[str, float] | None = None
                      ) -> Ranks:
    """Lower ranks one at a time (see the module docstring) until the summed cost of the
    layers is <= target, or every rank is 1 (the caller's feasibility check reports it)."""
    ranks = dict(start or full_allocation(spectra))
    weights = weights or {}
    by_name = {s.name: s for s in spectra}
    current = total_cost(spectra, ranks, cost)
    candidates = {name: _best_step(by_name[name], ranks[name], cost, weights.get(name, 1.0))
                  for name in by_name}
    while current > target:
        options = [(c[0], name) for name, c in candidates.items() if c is not None]
        if not options:
            break
        _, name = min(options)
        _, lowered, saved = candidates[name]
        ranks[name] = lowered
        current -= saved
        candidates[name] = _best_step(by_name[name], lowered, cost, weights.get(name, 1.0))
    return ranks


def _best_step(spectrum: LayerSpectrum, ranks: tuple[int, ...], cost: Cost, weight: float):
    """(energy per cost saved, lowered ranks, cost saved) of the layer's cheapest one-rank
    step, or None when every bond is at rank 1 (or no step saves anything)."""
    best = None
    here = cost(spectrum, ranks)
    for k, r in enumerate(ranks):
        if r <= 1:
            continue
        lowered = ranks[:k] + (r - 1,) + ranks[k + 1:]
        saved = here - cost(spectrum, lowered)
        if saved <= 0:
            continue
        price = weight * float(spectrum.singular_values[k][r - 1]) ** 2 / saved
        if best is None or price < best[0]:
            best = (price, lowered, saved)
    return best


def uniform_allocation(spectra: list[LayerSpectrum], target: float, cost: Cost = params_cost,
                       start: Ranks | None = None) -> Ranks:
    """The largest shared cap on every bond whose summed cost is <= target (cap 1 if none)."""
    start = start or full_allocation(spectra)
    top = max((max(r) for r in start.values() if r), default=1)

    def capped(cap: int) -> Ranks:
        return {name: tuple(min(r, cap) for r in ranks) for name, ranks in start.items()}

    low, high = 1, top  # binary search: cost grows with the cap
    while low < high:
        middle = (low + high + 1) // 2
        if total_cost(spectra, capped(middle), cost) <= target:
            low = middle
        else:
            high = middle - 1
    return capped(low)
