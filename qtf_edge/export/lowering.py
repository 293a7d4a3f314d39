"""Lowering choice per TT layer: keep the TT contraction or materialise W, for one target.

An exported graph takes one path whatever the token count, so export fixes each layer's
`TTLinear.lowering`, once per graph: for `tokens` tokens per call (1 for decode, the
context length for prefill). Per TT product (a projection, or a TT embedding's tied head,
x @ table.T) the target profile's roofline latency (cost.EnergyEstimator) of

    tt:    tokens x the chain's FLOPs per token; bytes read = the cores (float32)
    dense: tokens x 2 * in * out FLOPs;          bytes read = W (float32)

decides, the faster path winning (the smaller one within TIE of each other). With
`measure=True` (the cpu target: the exporting machine is of the class that runs it) a quick
timing of both paths in torch at `tokens` tokens decides instead. `max_bytes` caps the
model's weight bytes: layers are materialised in order of the time they save, while the
cap allows.

The roofline has no per-operator cost, so at one token it favours the chain wherever the
cores are fewer bytes than W; a chain of K small products costs K dispatches, which only a
measurement sees.

Layers given per-token bond masks (an adaptive-rank FFN) stay TT: a mask scales bond
channels inside the chain, which one materialised W cannot express.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from qtf_edge.cost.energy import EnergyEstimator
from qtf_edge.quant import weight_bytes
from qtf_edge.tt import TTEmbedding, TTLinear

BYTES_PER_VALUE = 4
TIE = 0.05          # relative latency difference under which the smaller form is kept
TIMING_REPEATS = 20


@dataclass
class TTProduct:
    """One x @ W whose W is a TT matrix: where its lowering lives and how to call it."""
    name: str
    holder: TTLinear                      # the module whose `lowering` picks the path
    call: Callable[[torch.Tensor], torch.Tensor]
    in_features: int
    out_features: int
    chain_flops_per_token: int
    masked: bool

    @property
    def tt_params(self) -> int:
        return sum(c.numel() for c in self.holder.cores)


def tt_products(model: nn.Module) -> list[TTProduct]:
    """Every TT projection and every TT embedding's tied head (its row gather has no
    dense alternative worth taking: it reads r^2 n values per token)."""
    heads = {id(m.tt): (name, m) for name, m in model.named_modules()
             if isinstance(m, TTEmbedding)}
    masked_ffn = model.config.adaptive_rank
    products = []
    for name, m in model.named_modules():
        if not isinstance(m, TTLinear):
            continue
        if id(m) in heads:
            table_name, table = heads[id(m)]
            products.append(TTProduct(f"{table_name} (tied head)", m, table.attend,
                                      table.embedding_dim, table.num_embeddings,
                                      table.attend_plan.flops_per_token, False))
        else:
            products.append(TTProduct(name, m, m, m.in_features, m.out_features,
                                      m.plan.flops_per_token,
                                      masked_ffn and name.split(".")[-2:-1] == ["ffn"]))
    return products


def _timed_ms(fn, x: torch.Tensor) -> float:
    with torch.inference_mode():
        fn(x)  # warm-up (and the dense cache)
        start = time.perf_counter()
        for _ in range(TIMING_REPEATS):
            fn(x)
        return (time.perf_counter() - start) / TIMING_REPEATS * 1e3


def _measured_ms(product: TTProduct, tokens: int) -> dict[str, float]:
    x = torch.randn(tokens, product.in_features)
    kept = product.holder.lowering
    times = {}
    for path in ("tt", "dense"):
        product.holder.lowering = path
        times[path] = _timed_ms(product.call, x)
    product.holder.lowering = kept
    return times


def _estimated_ms(product: TTProduct, tokens: int, estimator: EnergyEstimator) -> dict:
    dense_params = product.in_features * product.out_features
    return {"tt": estimator.estimate(tokens * product.chain_flops_per_token,
                                     BYTES_PER_VALUE * product.tt_params).latency_ms,
            "dense": estimator.estimate(tokens * 2 * dense_params,
                                        BYTES_PER_VALUE * dense_params).latency_ms}


def choose_lowering(model: nn.Module, profile: str, *, tokens: int = 1, measure: bool = False,
                    max_bytes: float | None = None, chain_runs: bool = True) -> list[dict]:
    """Set `lowering` on every TT product of `model` for calls of `tokens` tokens (see the
    module docstring); returns one row per product: layer, tokens, tt_ms, dense_ms
    (estimated or measured), basis, chosen, why. chain_runs=False: the target cannot run
    the chain's batched products (the Edge TPU has no BATCH_MATMUL), so W is materialised
    wherever the size budget allows, whatever the timing."""
    estimator = EnergyEstimator(profile)
    rows, candidates = [], []
    for product in tt_products(model):
        times = (_measured_ms(product, tokens) if measure
                 else _estimated_ms(product, tokens, estimator))
        row = {"layer": product.name, "tokens": tokens, "tt_ms": times["tt"],
               "dense_ms": times["dense"],
               "basis": "measured (torch)" if measure else f"estimated ({profile})",
               "chosen": "tt", "why": "tt is faster or within 5% and smaller"}
        if product.masked:
            row["why"] = "per-token ranks (bond masks) need the chain"
        elif not chain_runs or times["dense"] < times["tt"] * (1 - TIE):
            candidates.append((times["tt"] - times["dense"], product, row))
        product.holder.lowering = "tt"
        rows.append(row)
    shipped = weight_bytes(model)
    for _, product, row in sorted(candidates, key=lambda c: c[0], reverse=True):
        growth = BYTES_PER_VALUE * (product.in_features * product.out_features
                                    - product.tt_params)
        why = "dense is faster" if chain_runs else "the target runs no batched matmul"
        if max_bytes is not None and shipped + growth > max_bytes:
            row["why"] = f"{why}, but dense would exceed the size budget"
            continue
        product.holder.lowering, row["chosen"], row["why"] = "dense", "dense", why
        shipped += growth
    return rows


def apply_lowering(model: nn.Module, rows: list[dict]) -> None:
    """Set the lowerings `choose_lowering` chose (e.g. another graph's) on `model`."""
    chosen = {row["layer"]: row["chosen"] for row in rows}
    for product in tt_products(model):
        product.holder.lowering = chosen[product.name]
