"""Lowering choice per TT layer: keep the TT contraction or materialise W, for one target.

An exported graph takes one path whatever the token count, so export fixes each layer's
`TTLinear.lowering`. The choice is made for the decode step (one token), the step that
generation repeats: per layer, the target profile's roofline latency (cost.EnergyEstimator)
of

    tt:    the chain's FLOPs per token; bytes read = the cores (float32)
    dense: 2 * in * out FLOPs;          bytes read = W (float32)

and the faster path wins (the smaller one when they are within TIE of each other). With
`measure=True` (the host target: the machine exporting is the machine that will run it) a
quick timing of both paths in torch at one token decides instead of the estimate.
`max_bytes` caps the model's weight bytes: layers are materialised in order of the time
they save, while the cap allows.

A TT embedding keeps its own gather; layers given per-token bond masks (an adaptive-rank
FFN) stay TT: a mask scales bond channels inside the chain, which one materialised W
cannot express.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from qtf_edge.cost.energy import EnergyEstimator
from qtf_edge.tt import TTEmbedding, TTLinear

BYTES_PER_VALUE = 4
TIE = 0.05          # relative latency difference under which the smaller form is kept
TIMING_REPEATS = 50


def masked_layers(model: nn.Module) -> set[str]:
    """Names of the TT layers that receive per-token bond masks."""
    if not model.config.adaptive_rank:
        return set()
    return {name for name, m in model.named_modules()
            if isinstance(m, TTLinear) and name.split(".")[-2:-1] == ["ffn"]}


def _timed_ms(fn, x: torch.Tensor) -> float:
    with torch.inference_mode():
        fn(x)  # warm-up (and the dense cache)
        start = time.perf_counter()
        for _ in range(TIMING_REPEATS):
            fn(x)
        return (time.perf_counter() - start) / TIMING_REPEATS * 1e3


def _measured_ms(layer: TTLinear) -> dict[str, float]:
    x = torch.randn(1, layer.in_features)
    kept = layer.lowering
    times = {}
    for path in ("tt", "dense"):
        layer.lowering = path
        times[path] = _timed_ms(layer, x)
    layer.lowering = kept
    return times


def _estimated_ms(layer: TTLinear, estimator: EnergyEstimator) -> dict[str, float]:
    tt_params = sum(c.numel() for c in layer.cores)
    dense_params = layer.in_features * layer.out_features
    return {"tt": estimator.estimate(layer.plan.flops_per_token,
                                     BYTES_PER_VALUE * tt_params).latency_ms,
            "dense": estimator.estimate(2 * dense_params,
                                        BYTES_PER_VALUE * dense_params).latency_ms}


def choose_lowering(model: nn.Module, profile: str, *, measure: bool = False,
                    max_bytes: float | None = None) -> list[dict]:
    """Set `lowering` on every TT layer of `model` (see the module docstring); returns one
    row per layer: name, tt_ms, dense_ms (estimated or measured), basis, chosen, why."""
    estimator = EnergyEstimator(profile)
    masked = masked_layers(model)
    # A TT embedding gathers rows from its cores and runs its own head product; its inner
    # TTLinear is never called as a projection, so there is nothing to lower.
    tables = {id(m.tt) for m in model.modules() if isinstance(m, TTEmbedding)}
    rows, candidates = [], []
    for name, layer in model.named_modules():
        if not isinstance(layer, TTLinear) or id(layer) in tables:
            continue
        times = _measured_ms(layer) if measure else _estimated_ms(layer, estimator)
        row = {"layer": name, "tt_ms": times["tt"], "dense_ms": times["dense"],
               "basis": "measured (torch, 1 token)" if measure else f"estimated ({profile})",
               "chosen": "tt", "why": "tt is faster or within 5% and smaller"}
        if name in masked:
            row["why"] = "per-token ranks (bond masks) need the chain"
        elif times["dense"] < times["tt"] * (1 - TIE):
            candidates.append((times["tt"] - times["dense"], name, layer, row))
        layer.lowering = "tt"
        rows.append(row)
    weight_bytes = BYTES_PER_VALUE * sum(p.numel() for p in model.parameters())
    for _, name, layer, row in sorted(candidates, key=lambda c: c[0], reverse=True):
        growth = BYTES_PER_VALUE * (layer.in_features * layer.out_features
                                    - sum(c.numel() for c in layer.cores))
        if max_bytes is not None and weight_bytes + growth > max_bytes:
            row["why"] = "dense is faster but would exceed the size budget"
            continue
        layer.lowering, row["chosen"], row["why"] = "dense", "dense", "dense is faster"
        weight_bytes += growth
    return rows
