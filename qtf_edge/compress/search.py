"""One search over per-layer bit-widths and ranks for a byte budget (`compress --bits`).

Every layer weight-only quantisation applies to (quant.quantizable_layers: each nn.Linear
and nn.Embedding) gets a list of options, each with its exact shipped bytes:

    float | int8 | int4            the matrix as it is, rounded or not
    rank r, int8 | int4            low-rank factors (model/low_rank.py), both rounded

int4 in blocks of --block and of two and four times that (a scale per 32 weights costs
a bit a weight; a longer block saves most of it for a coarser rounding),
at ranks r on a grid of RANK_STEP below the break-even rank in*out/(in+out) (a pair of
float factors is never offered: at four bytes a weight it only beats an int8 matrix at
ranks too small to be useful). Factors come from the whitened SVD (whitening.py, SVD-LLM):
the singular values of the matrix scaled by its calibration inputs are output error, so
the kept part is the best rank-r layer on real inputs. The singular values go to the side
whose rounding blocks do not mix components: the input projection of a linear layer (each
of its rows is one component, scaled alone) and the projection of an embedding (its table's
rows mix components, so the table keeps equal scales).

Each option's cost is measured: the calibration loss of the source model with only that
layer changed, minus the source's loss (one forward pass over the calibration windows per
option). Assuming the costs add, the choice is a multiple-choice knapsack: one option per
layer, summed bytes within the budget, least summed loss. It is solved exactly by dynamic
programming over bytes in BYTE_UNITS steps (options are few and their loss-versus-bytes
curves are not convex, int8 to int4 being a jump, so greedy marginal steps can stop short
of the optimum; the table costs layers x options x units, well under a second).

Costs do not add exactly, so the knapsack's answer is one candidate among others: every
uniform precision that fits (all int8, all int4: the output is never worse than
quantisation alone) and the knapsack's answers at slightly tighter budgets. Each candidate
is built and its calibration loss measured; the lowest wins.

With a decode-time limit (compress --budget decode_ms=...), each candidate that fits the
bytes is also exported and its decode step timed on this machine (profile/onnx_timing.py),
and only those within the limit may win. Speed is not additive per layer the way loss
nearly is (a kernel's time depends on its neighbours' and the runtime's), so it is measured
on whole candidates rather than priced in the knapsack. The one thing known beforehand is
that a kernel can be slow for a precision on a runtime (int8 MatMulNBits is several times
slower than int4 or float in ONNX Runtime 1.32 on x86, benchmarks/RESULTS.md), so the
knapsack's answers without any int8 option are candidates too.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qtf_edge.compress.whitening import Whitening, layer_whitenings
from qtf_edge.evaluate import windows_loss
from qtf_edge.model import QTensorFormer
from qtf_edge.model.low_rank import factored
from qtf_edge.module_paths import replace_module
from qtf_edge.quant import quantizable_layers, quantized_layers, weight_bytes
from qtf_edge.quant.blockwise import MAX_BLOCK
from qtf_edge.quant.layers import quantized
from qtf_edge.train.budget import BudgetError

RANK_STEP = 16            # ranks offered: multiples of this (an int4 block of the factors)
INT4_BLOCKS = (1, 2, 4)   # int4 blocks offered: --block times these (fewer scales, coarser)
BYTE_UNITS = 4000         # resolution of the knapsack's byte axis
TIGHTER = (1.0, 0.97, 0.94)  # knapsack budgets tried, as fractions of the real one
EMBEDDING = "token_embedding"
HEAD = "head"


@dataclass(frozen=True)
class Option:
    layer: str
    bits: int | None        # None: float
    rank: int | None        # None: the full matrix
    block: int | None       # int4's block (capped at each matrix's row); None otherwise
    nbytes: int
    loss: float = 0.0       # calibration loss increase with only this layer changed


@dataclass(frozen=True)
class _Modes:  # what whitening.layer_whitenings reads of a layer: a two-core low-rank split
    in_modes: tuple[int, int]
    out_modes: tuple[int, int]


class _Factors:
    """Whitened SVD factors of one layer, computed once, cut to any rank."""

    def __init__(self, module: nn.Module, whitening: Whitening | None):
        self.module = module
        weight = _matrix(module).double()  # (in, out)
        rows, cols = weight.shape
        self.whitening = whitening
        whitened = weight if whitening is None else whitening.whiten(weight, (rows, 1), (1, cols))
        self.u, self.s, self.vh = torch.linalg.svd(whitened, full_matrices=False)

    def module_at(self, rank: int) -> nn.Module:
        """The factored float layer of this rank."""
        u, s, vh = self.u[:, :rank], self.s[:rank], self.vh[:rank]
        embedding = isinstance(self.module, nn.Embedding)
        left, right = (u, s[:, None] * vh) if embedding else (u * s, vh)
        if self.whitening is not None:  # un-whiten: the whitening sits on the input side
            rows, cols = left.shape[0], right.shape[1]
            cores = self.whitening.unwhiten([left.reshape(1, rows, 1, rank),
                                             right.reshape(rank, 1, cols, 1)])
            left, right = cores[0].reshape(rows, rank), cores[1].reshape(rank, cols)
        layer = factored(self.module, rank)
        with torch.no_grad():
            if embedding:
                layer.table.weight.copy_(left)
                layer.expand.copy_(right)
            else:
                layer.project.weight.copy_(left.T)
                layer.expand.weight.copy_(right.T)
                if self.module.bias is not None:
                    layer.expand.bias.copy_(self.module.bias)
        return layer


def _matrix(module: nn.Module) -> torch.Tensor:
    """Its (in, out) matrix; an embedding's (vocab, dim) table."""
    weight = module.weight.detach()
    return weight if isinstance(module, nn.Embedding) else weight.T


def offered_ranks(module: nn.Module) -> list[int]:
    """Ranks whose factors store fewer weights than the matrix (multiples of RANK_STEP)."""
    rows, cols = _matrix(module).shape
    return [r for r in range(RANK_STEP, min(rows, cols), RANK_STEP)
            if r * (rows + cols) < rows * cols]


def _rounded(module: nn.Module, bits: int | None, block: int) -> nn.Module:
    """`module` (plain or factored) with every quantisable matrix at `bits`."""
    if bits is None:
        return module
    if isinstance(module, (nn.Linear, nn.Embedding)):
        return quantized(module, bits, block)
    module = copy.copy(module)  # a shallow copy: the factors' modules are swapped, not changed
    module._modules = dict(module._modules)
    for child in quantizable_layers(module):
        replace_module(module, child, quantized(module.get_submodule(child), bits, block))
    return module


def _option_module(option: Option, source: nn.Module, factors: dict[str, _Factors],
                   block: int) -> nn.Module:
    module = source.get_submodule(option.layer)
    if option.rank is not None:
        module = factors[option.layer].module_at(option.rank)
    return _rounded(module, option.bits, option.block or block)


@dataclass
class SearchResult:
    model: QTensorFormer
    chosen: list[Option]
    candidates: list[dict]       # every candidate: name, bytes, predicted and measured loss
    tokens: int                  # calibration tokens the losses are summed over
    decode_ms: float | None = None  # the winner's measured decode step, when limited


@dataclass(frozen=True)
class DecodeLimit:
    """A decode step limit in ms, and how a candidate's step is timed on this machine."""
    ms: float
    time: Callable[[nn.Module], float]
    where: str                   # the machine and runtime, for messages


@dataclass
class _Space:
    """What the search may choose from, before anything is measured."""
    layers: list[str]
    factorable: list[str]
    fixed: int                   # bytes of every weight no option changes
    options: dict[str, list[Option]]

    @property
    def smallest(self) -> int:
        return self.fixed + sum(min(o.nbytes for o in opts) for opts in self.options.values())


def _space(source: QTensorFormer, bits, block: int, embeddings: bool) -> _Space:
    layers = quantizable_layers(source)
    factorable = [n for n in layers if (embeddings or n not in (EMBEDDING, HEAD))
                  and (n == EMBEDDING or type(source.get_submodule(n)) is nn.Linear)
                  and offered_ranks(source.get_submodule(n))]
    fixed = weight_bytes(source) - sum(weight_bytes(source.get_submodule(n)) for n in layers)
    options = {n: _layer_options(n, source.get_submodule(n), bits, n in factorable, block)
               for n in layers}
    return _Space(layers, factorable, fixed, options)


def smallest_bytes(model: QTensorFormer, bits, block: int, *, embeddings: bool) -> int:
    """The fewest bytes any candidate ships: each layer at its smallest option."""
    return _space(model, bits, block, embeddings).smallest


def search(model: QTensorFormer, byte_limit: float, bits: tuple[int, ...], block: int,
           calibration: list[list[int]], *, embeddings: bool = False, whitened: bool = True,
           batch_size: int = 8, device: str | torch.device = "cpu",
           decode_limit: DecodeLimit | None = None,
           progress: Callable[[str], None] = lambda line: None) -> SearchResult | None:
    """The most accurate model of `model` (not changed) whose weights ship within
    `byte_limit` bytes, per the module docstring; None when no candidate fits (before
    anything is measured). embeddings: offer ranks for the token embedding and an untied
    head too; whitened False: plain SVD factors (compress --method plain). The losses are
    measured on `device`; the result is on the CPU. decode_limit: candidates must also
    decode within it (BudgetError, naming the fastest, when none does). progress: a line
    per layer measured."""
    source = copy.deepcopy(model).to(device).eval()
    space = _space(source, bits, block, embeddings)
    if space.smallest > byte_limit:
        return None
    whitenings = (_whitenings(source, space.factorable, calibration, batch_size) if whitened
                  else dict.fromkeys(space.factorable))
    factors = {name: _Factors(source.get_submodule(name), whitenings[name])
               for name in space.factorable}
    tokens = _tokens(calibration)

    def loss_of(candidate: nn.Module) -> float:
        value, _ = windows_loss(candidate, calibration, batch_size=batch_size, device=device,
                                float32=True)
        return value

    base = loss_of(source)
    options = {}
    for number, name in enumerate(space.layers, 1):
        progress(f"search: layer {number}/{len(space.layers)} {name}, "
                 f"{len(space.options[name])} options")
        original = source.get_submodule(name)
        options[name] = []
        for option in space.options[name]:
            replace_module(source, name, _option_module(option, source, factors, block)
                           .to(device))
            options[name].append(dataclasses.replace(option, loss=loss_of(source) - base))
            replace_module(source, name, original)
    plans = {f"uniform int{b}": {n: _uniform(options[n], b, block) for n in space.layers}
             for b in bits}
    offered = {"": options}
    if decode_limit and 8 in bits:
        offered[" without int8"] = {n: [o for o in options[n] if o.bits != 8]
                                    for n in space.layers}
    for fraction in TIGHTER:
        for name, choices in offered.items():
            plan = knapsack(choices, (byte_limit - space.fixed) * fraction)
            if plan is not None:
                plans[f"knapsack{name} at {fraction:g} of the budget"] = plan
    candidates, best, built = [], None, {}
    for label, plan in plans.items():
        nbytes = space.fixed + sum(o.nbytes for o in plan.values())
        row = {"candidate": label, "bytes": nbytes, "fits": nbytes <= byte_limit,
               "predicted_loss_increase": sum(o.loss for o in plan.values()) / tokens}
        candidates.append(row)
        if not row["fits"]:
            continue
        key = tuple((o.layer, o.bits, o.rank, o.block) for o in plan.values())
        if key not in built:
            candidate = build(source, plan, factors, block).to(device)
            decode_ms = None
            if decode_limit:
                progress(f"search: timing the decode step of {label}")
                decode_ms = decode_limit.time(candidate.to("cpu").eval())
            built[key] = (candidate.to(device), loss_of(candidate), decode_ms)
        candidate, loss, decode_ms = built[key]
        row["measured_loss_increase"] = (loss - base) / tokens
        if decode_ms is not None:
            row["decode_ms"] = decode_ms
            row["fits"] = decode_ms <= decode_limit.ms
            if not row["fits"]:
                continue
        if best is None or loss < best[1]:
            best = (candidate, loss, list(plan.values()), decode_ms)
    if best is None and decode_limit and any("decode_ms" in c for c in candidates):
        fastest = min(c["decode_ms"] for c in candidates if "decode_ms" in c)
        raise BudgetError(f"--budget decode_ms={decode_limit.ms:.4g} cannot be met: the "
                          f"fastest candidate within the size budget decodes in "
                          f"{fastest:.4g} ms (measured here, {decode_limit.where})")
    if best is None:  # only a budget within the knapsack's byte grid of the smallest
        return None
    return SearchResult(best[0].to("cpu").eval(), best[2], candidates, tokens, best[3])


def _tokens(windows: list[list[int]]) -> int:
    return sum(len(w) - 1 for w in windows)


def _whitenings(source, names, calibration, batch_size) -> dict[str, Whitening]:
    """layer_whitenings by the names it knows: the embedding's is "token_embedding.tt"."""
    keyed = {(f"{EMBEDDING}.tt" if n == EMBEDDING else n): n for n in names}
    shapes = {key: _Modes((_matrix(source.get_submodule(n)).shape[0], 1),
                          (1, _matrix(source.get_submodule(n)).shape[1]))
              for key, n in keyed.items()}
    found = layer_whitenings(source, shapes, calibration, batch_size) if shapes else {}
    return {keyed[key]: whitening for key, whitening in found.items()}


def _layer_options(name: str, module: nn.Module, bits: tuple[int, ...], factorable: bool,
                   block: int) -> list[Option]:
    """Every distinct option of one layer, with its bytes (not yet its loss)."""
    shapes = [(None, module)]
    if factorable:
        shapes += [(rank, factored(module, rank)) for rank in offered_ranks(module)]
    options, seen = [], set()
    for rank, shape in shapes:
        for width in ((None,) if rank is None else ()) + tuple(bits):
            for size in [min(block * k, MAX_BLOCK) for k in INT4_BLOCKS] if width == 4 else [block]:
                rounded = _rounded(shape, width, size)
                key = (rank, width, tuple(m.quant.block
                                          for m in quantized_layers(rounded).values()))
                if key not in seen:  # blocks longer than a row are that row: one option
                    seen.add(key)
                    options.append(Option(name, width, rank, size if width == 4 else None,
                                          weight_bytes(rounded)))
    return options


def _uniform(options: list[Option], bits: int, block: int) -> Option:
    return next(o for o in options if o.bits == bits and o.rank is None
                and o.block in (None, block))


def knapsack(options: dict[str, list[Option]], capacity: float) -> dict[str, Option] | None:
    """One option per layer, summed nbytes <= capacity, least summed loss (exact on a grid
    of BYTE_UNITS steps, each option's bytes rounded up: the answer always fits); None if
    even the smallest options do not fit."""
    if capacity <= 0:
        return None
    unit = capacity / BYTE_UNITS
    best = np.zeros(BYTE_UNITS + 1)             # least loss within b units, layers so far
    picks = []
    for name, layer_options in options.items():
        step = np.full(BYTE_UNITS + 1, np.inf)
        choice = np.full(BYTE_UNITS + 1, -1)
        for k, option in enumerate(layer_options):
            units = math.ceil(option.nbytes / unit)
            if units > BYTE_UNITS:
                continue
            shifted = np.full(BYTE_UNITS + 1, np.inf)
            shifted[units:] = best[:BYTE_UNITS + 1 - units] + option.loss
            better = shifted < step
            step[better], choice[better] = shifted[better], k
        best = step
        picks.append((name, choice))
    if not np.isfinite(best[-1]):
        return None
    plan, units = {}, BYTE_UNITS
    for name, choice in reversed(picks):  # walk back: each layer's pick at the units left
        option = options[name][choice[units]]
        plan[name] = option
        units -= math.ceil(option.nbytes / unit)
    return dict(reversed(plan.items()))


def build(source: QTensorFormer, plan: dict[str, Option], factors: dict[str, _Factors],
          block: int) -> QTensorFormer:
    """The model of `plan` as a config (low_rank, weight_bits, weight_blocks) and its
    weights: loadable from a run folder like any other."""
    low_rank, weight_bits, weight_blocks = {}, {}, {}
    state = {k: v for k, v in source.state_dict().items()
             if not any(k.startswith(f"{name}.") for name in plan)}
    for name, option in plan.items():
        module = _option_module(option, source, factors, block)
        state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        if option.rank is not None:
            low_rank[name] = option.rank
        paths = [f"{name}.{child}" if child else name for child in quantized_layers(module)]
        weight_bits.update(dict.fromkeys(paths, option.bits) if option.bits else {})
        if option.block not in (None, block):
            weight_blocks.update(dict.fromkeys(paths, option.block))
    config = dataclasses.replace(source.config, low_rank=low_rank, weight_bits=weight_bits,
                                 weight_block=block, weight_blocks=weight_blocks)
    model = QTensorFormer(config)
    model.load_state_dict(state)
    return model.eval()

