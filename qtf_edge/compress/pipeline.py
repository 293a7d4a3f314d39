"""`compress_model`: the most accurate TT model of a given one that fits a budget on a target.

1. The target config: the same model with its block projections as TT matrices (and,
   with embeddings=True, its embedding table and head), in `layout` ("low_rank": W = A B;
   "balanced": TT cores over balanced modes); a model that is already TT keeps its config
   and layout. Its TT layers are built at their largest ranks.
2. With method "whitened" (whitening.py), one pass of the source model over calibration
   windows gives each layer's input statistics, and every weight is whitened by them, so
   that singular values measure output error on real inputs; "plain" keeps the weights.
3. Every TT layer's spectra are computed once from the (whitened) source weight: an
   nn.Linear's, or a TT layer's materialised matrix (re-truncating a TT matrix by TT-SVD
   of its dense form gives what TT rounding gives, and these matrices fit in memory).
4. Ranks are allocated (allocate.py; with sensitivity, weighted by each layer's measured
   loss sensitivity, sensitivity.py) against a proxy of the budget: parameters when
   `params` or `size_mb` is over, else the layers' FLOPs per token. The built model's
   real figures (cost model on the target profile) are then checked; if one is still
   over, the proxy target shrinks by the overshoot and allocation continues from there.
5. Cores come from TT-SVD (tensorly) of the (whitened) weights at the allocated ranks,
   un-whitened; every other weight is copied. The result's figures are measured again:
   the budget is met or BudgetError.

With `bits` (weight-only quantisation, qtf_edge/quant), none of the above: search.py
chooses each layer's bit-width and rank jointly for the size budget (shipped bytes), with
every uniform precision among the candidates, so the result is never worse than
quantisation alone.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from qtf_edge.compress.allocate import (Cost, greedy_allocation, params_cost, total_cost,
                                        uniform_allocation)
from qtf_edge.compress.search import DecodeLimit, search, smallest_bytes
from qtf_edge.compress.sensitivity import layer_sensitivity
from qtf_edge.compress.spectra import LayerSpectrum, layer_spectrum
from qtf_edge.compress.whitening import Whitening, layer_whitenings, truncate_into
from qtf_edge.config import TT_LAYOUTS, ModelConfig, block_rank_limit, embedding_rank_limit
from qtf_edge.cost.counts import count_params
from qtf_edge.host import describe_host
from qtf_edge.model import QTensorFormer
from qtf_edge.profile.onnx_timing import decode_latency
from qtf_edge.quant import DEFAULT_BLOCK, quantized_layers, weight_bytes
from qtf_edge.quant.layers import FLOAT_BYTES
from qtf_edge.train.budget import (Budget, BudgetError, describe, format_limit, measure,
                                   unmet_message, violations)
from qtf_edge.tt import TTEmbedding, TTLinear, plan_contraction

ALLOCATORS = ("greedy", "uniform")
METHODS = ("whitened", "plain")  # activation-aware truncation, or TT-SVD of the weights
MAX_REFINEMENTS = 30  # proxy-target tightenings before giving up (each shrinks it >= 2%)


@dataclass
class CompressResult:
    model: QTensorFormer
    allocator: str
    method: str
    profile: str
    limits: dict                    # the budget, resolved to absolute figures
    before: dict                    # the input model's figures (train.budget.measure)
    after: dict                     # the compressed model's
    layers: list[dict] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)   # what the --bits search built

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "model"}


def target_config(config: ModelConfig, embeddings: bool, layout: str = "low_rank"
                  ) -> ModelConfig:
    """The config whose TT layers the compressed model has (largest ranks allowed). Dense
    layers become TT in `layout`; a model with TT layers already keeps its layout."""
    if layout not in TT_LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(TT_LAYOUTS)}, got {layout!r}")
    if config.use_tt or config.tt_embeddings:
        layout = config.tt_layout
    config = dataclasses.replace(config, tt_layout=layout)
    changes = {}
    if not config.use_tt:
        changes.update(use_tt=True, tt_rank=block_rank_limit(config))
    if embeddings and not config.tt_embeddings:
        changes.update(tt_embeddings=True, tt_embedding_rank=embedding_rank_limit(config))
    return dataclasses.replace(config, **changes)


def _source_module(model: nn.Module, name: str) -> nn.Module:
    """The module a target TT layer replaces: the one at the same path, or for
    token_embedding.tt the embedding (its TT matrix, if it is a TTEmbedding)."""
    if name.endswith("token_embedding.tt"):
        module = model.get_submodule(name.removesuffix(".tt"))
        return module.tt if isinstance(module, TTEmbedding) else module
    return model.get_submodule(name)


def _source_weight(module: nn.Module) -> torch.Tensor:
    """Its (in, out) matrix (an embedding's: vocab x d)."""
    if isinstance(module, TTLinear):
        return module.to_dense().detach()
    if isinstance(module, nn.Embedding):
        return module.weight.detach()
    return module.weight.detach().T  # nn.Linear stores (out, in)


def _ranks(layer: TTLinear) -> tuple[int, ...]:
    return tuple(layer.ranks[1:-1])


def flops_cost(spectrum: LayerSpectrum, ranks: tuple[int, ...]) -> float:
    """FLOPs per token of the layer's TT chain at these internal ranks."""
    return float(plan_contraction(spectrum.in_modes, spectrum.out_modes, (1, *ranks, 1))
                 .flops_per_token)


def _shapes_model(model: QTensorFormer, ranks: dict) -> QTensorFormer:
    """A copy whose TT layers have empty cores of the allocated shapes: costs depend on
    shapes only, so the real figures are measured without any TT-SVD."""
    shadow = copy.deepcopy(model)
    for name, layer_ranks in ranks.items():
        shadow.get_submodule(name).set_empty_cores((1, *layer_ranks, 1))
    return shadow


def compress_model(model: QTensorFormer, budget: Budget, profile: str, *,
                   embeddings: bool = False, allocator: str = "greedy",
                   method: str = "whitened", layout: str = "low_rank",
                   calibration: list[list[int]] | None = None,
                   sensitivity: bool = True, bits: tuple[int, ...] | None = None,
                   block: int = DEFAULT_BLOCK, device: str = "cpu",
                   progress: Callable[[str], None] = lambda line: None) -> CompressResult:
    """Compress `model` (not changed) to fit `budget` on `profile`; see the module docstring.
    calibration: token windows, needed by method "whitened" and by sensitivity (the greedy
    allocator then weighs each layer's discarded energy by its measured loss sensitivity,
    see sensitivity.py; the uniform one has no use for it). BudgetError (one line, with
    the smallest reachable figures) when no ranks fit."""
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator must be one of {ALLOCATORS}, got {allocator!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    sensitivity = sensitivity and allocator == "greedy"
    if calibration is None and (method == "whitened" or sensitivity):
        raise ValueError("calibration windows are needed for whitened truncation and "
                         "sensitivity weights")
    seq_len = model.config.context_length
    before = measure(model, profile, seq_len)
    if budget.decode_ms is not None:
        if not bits:
            raise ValueError("--budget decode_ms is measured on the candidates of the --bits "
                             "search; add --bits (or use latency_ms, the cost model's "
                             "estimate on --target)")
        progress("timing the input model's decode step")
        before["decode_ms"] = decode_latency(model)["decode_ms"]
    limits = (budget.resolve(before) if budget.relative else budget).limits()
    if bits:
        return _searched(model, limits, before, profile, bits, block, calibration, embeddings,
                         method, device, progress)
    target = QTensorFormer(target_config(model.config, embeddings, layout))
    layers = {name: m for name, m in target.named_modules() if isinstance(m, TTLinear)
              and (embeddings or not name.startswith(("token_embedding", "head")))}
    originals = {name: _source_module(model, name) for name in layers}
    sources = {name: _source_weight(module) for name, module in originals.items()}
    whitenings: dict[str, Whitening | None] = dict.fromkeys(layers)
    if method == "whitened":
        whitenings = layer_whitenings(model, layers, calibration)
    spectra = [layer_spectrum(name, _whitened(sources[name], whitenings[name], layer),
                              layer.in_modes, layer.out_modes)
               for name, layer in layers.items()]
    # Ranks never grow: an existing TT layer caps each bond at its current rank, a new
    # one at the target config's.
    caps = {name: _ranks(originals[name] if isinstance(originals[name], TTLinear) else layer)
            for name, layer in layers.items()}
    start = {s.name: tuple(map(min, s.max_ranks, caps[s.name])) for s in spectra}

    def truncate(name: str, ranks: tuple[int, ...]) -> None:
        truncate_into(layers[name], sources[name], (1, *ranks, 1), whitenings[name])

    with torch.no_grad():
        target.load_state_dict(_kept_weights(model, target, layers), strict=False)
    for name in layers:
        truncate(name, start[name])
    weights = None
    if sensitivity:
        weights = layer_sensitivity(target, spectra, truncate, start, calibration)
    ranks = _allocate(target, spectra, start, limits, profile, seq_len, allocator, weights)
    for name in layers:
        truncate(name, ranks[name])
    after = measure(target, profile, seq_len)
    missed = violations(Budget(**limits), after)
    if missed:  # allocation checked the same figures on the shapes; this is a guard
        raise BudgetError(unmet_message(Budget(**limits), missed, after, profile))
    rows = [_layer_row(name, originals[name], layers[name], sources[name], whitenings[name])
            for name in layers]
    for row in rows if weights else ():
        row["sensitivity"] = weights[row["layer"]]
    return CompressResult(target, allocator, method, profile, limits, before, after, rows)


def _searched(model, limits, before, profile, bits, block, calibration, embeddings, method,
              device, progress) -> CompressResult:
    """compress_model's `bits` path: search.py for the size budget, then every budget
    key checked on the result."""
    if "size_mb" not in limits:
        raise ValueError("--bits searches bit-widths and ranks for a size budget: add "
                         "size_mb=... to --budget")
    seq_len = model.config.context_length
    decode_limit = None if "decode_ms" not in limits else DecodeLimit(
        limits["decode_ms"], lambda candidate: decode_latency(candidate)["decode_ms"],
        f"ONNX Runtime, 1 thread, {describe_host(1)}")
    found = search(model, limits["size_mb"] * 1e6, bits, block, calibration,
                   embeddings=embeddings, whitened=method == "whitened", device=device,
                   decode_limit=decode_limit, progress=progress)
    if found is None:
        smallest = smallest_bytes(model, bits, block, embeddings=embeddings) / 1e6
        hint = "" if embeddings else "; pass --embeddings to offer the embedding ranks too"
        raise BudgetError(f"--budget size_mb={format_limit('size_mb', limits['size_mb'])} "
                          f"cannot be met: the smallest this search reaches is "
                          f"{describe('size_mb', smallest, profile)} (every layer at "
                          f"int{min(bits)}, at its lowest offered rank){hint}")
    after = measure(found.model, profile, seq_len)
    if found.decode_ms is not None:
        after["decode_ms"] = found.decode_ms
    missed = violations(Budget(**limits), after)
    if missed:
        raise BudgetError(unmet_message(Budget(**limits), missed, after, profile))
    rows = [{"layer": o.layer, "bits": o.bits, "rank": o.rank,
             "blocks": sorted({m.quant.block for m in quantized_layers(
                 found.model.get_submodule(o.layer)).values()}),
             "bytes_before": weight_bytes(model.get_submodule(o.layer)),
             "bytes_after": o.nbytes, "loss_increase": o.loss / found.tokens}
            for o in found.chosen]
    return CompressResult(found.model, "knapsack", method, profile, limits, before, after,
                          rows, found.candidates)


def _whitened(weight: torch.Tensor, whitening: Whitening | None, layer: TTLinear
              ) -> torch.Tensor:
    if whitening is None:
        return weight
    return whitening.whiten(weight, layer.in_modes, layer.out_modes)


def _allocate(target, spectra, start, limits, profile, seq_len, allocator, weights) -> dict:
    """Allocate against a proxy, check the real figures on the shapes, tighten, repeat."""
    by_params = {"params", "size_mb"}
    ranks = dict(start)
    for _ in range(MAX_REFINEMENTS):
        figures = measure(_shapes_model(target, ranks), profile, seq_len)
        missed = violations(Budget(**limits), figures)
        if not missed:
            return ranks
        cost: Cost = params_cost if missed.keys() & by_params else flops_cost
        layer_cost = total_cost(spectra, ranks, cost)
        if cost is params_cost:  # TT cores are float32: a byte over is a quarter parameter
            over = max(figures["params"] - limits.get("params", float("inf")),
                       (figures["size_mb"] - limits.get("size_mb", float("inf")))
                       * 1e6 / FLOAT_BYTES)
            goal = layer_cost - over
        else:
            goal = layer_cost * min(limit / figure for figure, limit in missed.values()) * 0.98
        if allocator == "greedy":
            next_ranks = greedy_allocation(spectra, goal, cost, start=ranks, weights=weights)
        else:
            next_ranks = uniform_allocation(spectra, goal, cost, start=ranks)
        if next_ranks == ranks:  # nothing left to lower: every rank is 1
            break
        ranks = next_ranks
    figures = measure(_shapes_model(target, ranks), profile, seq_len)
    missed = violations(Budget(**limits), figures)
    if missed:
        smallest = measure(_shapes_model(target, {s.name: (1,) * len(s.max_ranks)
                                                   for s in spectra}), profile, seq_len)
        message = unmet_message(Budget(**limits), missed, smallest, profile)
        if "params" in missed and not any(n.startswith("token_embedding") for n in start):
            embedding = count_params(target.token_embedding)
            message += (f"; the embedding alone has {describe('params', embedding)}: "
                        f"pass --embeddings to compress it too")
        raise BudgetError(message)
    return ranks


def _kept_weights(source: nn.Module, target: nn.Module, layers: dict) -> dict:
    """Every source tensor the target has under the same name and shape, except TT cores
    that are about to be replaced."""
    replaced = tuple(f"{name}.cores." for name in layers)
    target_state = target.state_dict()
    return {k: v for k, v in source.state_dict().items()
            if k in target_state and v.shape == target_state[k].shape
            and not k.startswith(replaced)}


@torch.no_grad()
def _layer_row(name: str, before: nn.Module, layer: TTLinear, weight: torch.Tensor,
               whitening: Whitening | None) -> dict:
    """Ranks, parameters and relative Frobenius error of the weights; with whitening, also
    of the whitened weights: the relative output error on the calibration inputs."""
    def relative_error(reference, approximation) -> float:
        reference = reference.double()
        return float(torch.linalg.norm(approximation.double() - reference)
                     / torch.linalg.norm(reference))

    dense = layer.to_dense()
    row = {"layer": name,
           "ranks_before": list(_ranks(before)) if isinstance(before, TTLinear) else None,
           "ranks_after": list(_ranks(layer)),
           "params_before": count_params(before), "params_after": count_params(layer),
           "relative_error": relative_error(weight, dense)}
    if whitening is not None:
        row["relative_output_error"] = relative_error(_whitened(weight, whitening, layer),
                                                      _whitened(dense, whitening, layer))
    return row
