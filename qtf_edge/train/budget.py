"""Hard budgets of size, latency and energy, and how training reaches them.

    qtf-edge train --preset tiny --budget params=30k,latency_ms=5,energy_uj=60

Keys: params (parameters), flops (counted per query of context_length tokens), latency_ms
and energy_uj (per query, ESTIMATED by the cost model on the --target profile, never
measured) and size_mb (the weights' bytes as they ship: 4 bytes a float32 parameter, codes
and scales for weight-only quantised layers, a tied table once; quant/layers.py). Numbers take an optional
k (x1e3) or M (x1e6) suffix, or an x to be relative to the input model (params=0.25x).
`compress --bits` also takes decode_ms: the exported decode step, MEASURED on the machine
it runs on (ONNX Runtime, one thread; compress/search.py), which no estimate replaces.

Policy (what `fit_to_budget` and the training loop do):

- Before training: feasibility. The smallest configuration this model can reach is the
  same model with every TT bond at rank 1; if even that misses a budget, training does
  not start (exit 2, one line with the smallest figure per violated key). A dense model
  has no TT ranks to lower, so its only reachable figure is its own.
- At 25%, 50% and 75% of the steps, and after the last step: if the estimate is over
  budget, TT ranks are lowered by TT rounding (`round_`, a truncated TT-SVD) until it
  fits. One rank cap is shared by every TT layer (block projections and the TT
  embedding); it starts at the largest rank present and steps down x0.75 (at least by
  one) until the estimate fits, so the layers with the largest ranks (usually the
  embedding) are rounded first. Costs depend only on shapes, so the cap is searched on
  a copy whose cores are empty tensors of the capped shapes, and the model is rounded
  once, to the cap found. Rounding early leaves the remaining steps to recover the loss;
  later points only act if the model is over again (e.g. a resumed run).
- Rounding replaces the core Parameters: the optimizer is rebuilt, the AdamW moments of
  rounded cores are reset (they start again from zero, as at step 0), every other
  parameter keeps its moments.
- Routing: lowering the routers' target_fraction (fewer tokens on the quantum path) is
  NOT used. The cost model counts both attention paths for every token (the gate mixes
  them; see qtf_edge.cost.counts), so the routed fraction does not change the latency or
  energy estimate, and claiming it helps would be pretending.
- The final checkpoint must meet every budget; the figures are printed, stored in
  metrics.jsonl (a "budget" event) and in the run's summary.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from qtf_edge.cost import EnergyEstimator, estimate_model_energy
from qtf_edge.cost.counts import count_params, model_cost, total
from qtf_edge.quant import weight_bytes
from qtf_edge.tt import TTLinear

KEYS = ("params", "flops", "latency_ms", "energy_uj", "size_mb")  # what training can reach
MEASURED_KEYS = ("decode_ms",)  # only measured on exported graphs (compress --bits)
ALL_KEYS = KEYS + MEASURED_KEYS
SCHEDULE = (0.25, 0.5, 0.75)  # fractions of the steps at which ranks may be lowered
RANK_STEP = 0.75              # the shared rank cap shrinks by this factor per try
_SUFFIXES = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "x": 1.0}
_NUMBER = re.compile(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)([kKMx]?)")


class BudgetError(ValueError):
    """A budget that cannot be (or was not) met: exit 2 with one line."""


@dataclass(frozen=True)
class Budget:
    params: float | None = None
    flops: float | None = None
    latency_ms: float | None = None
    energy_uj: float | None = None
    size_mb: float | None = None
    decode_ms: float | None = None
    relative: tuple[str, ...] = ()  # keys given as a multiple of the input model's figure

    def limits(self) -> dict[str, float]:
        if self.relative:
            raise ValueError(f"budget {self.spec()} is relative; resolve() it against the "
                             f"input model's figures first")
        return {k: getattr(self, k) for k in ALL_KEYS if getattr(self, k) is not None}

    def resolve(self, reference: dict) -> "Budget":
        """Relative limits (0.25x) times the reference figures (the input model's)."""
        scaled = {k: getattr(self, k) * reference[k] for k in self.relative}
        return dataclasses.replace(self, relative=(), **scaled)

    def to_dict(self) -> dict[str, float]:
        return {k: (int(v) if k == "params" else v) for k, v in self.limits().items()}

    def __bool__(self) -> bool:
        return any(getattr(self, k) is not None for k in ALL_KEYS)

    def spec(self) -> str:
        return ",".join(f"{k}={getattr(self, k):g}x" if k in self.relative
                        else f"{k}={format_limit(k, getattr(self, k))}"
                        for k in ALL_KEYS if getattr(self, k) is not None)


def _allowed(keys=KEYS) -> str:
    return (f"allowed keys: {', '.join(keys)} (numbers with an optional k/M suffix, or x "
            f"for a multiple of the input model's figure)")


def parse_budget(text: str, flag: str = "--budget", keys: tuple[str, ...] = KEYS) -> Budget:
    """'params=800k,latency_ms=5' or 'params=0.25x' -> Budget; ValueError naming the flag."""
    values, relative = {}, []
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        key, eq, raw = (s.strip() for s in item.partition("="))
        if key not in keys or not eq:
            raise ValueError(f"{flag} {text}: unknown key {key!r} (expected KEY=NUMBER); "
                             f"{_allowed(keys)}")
        match = _NUMBER.fullmatch(raw)
        value = float(match[1]) * _SUFFIXES[match[2]] if match else math.nan
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} {text}: {key}={raw!r} is not a positive number; "
                             f"{_allowed(keys)}")
        if key in values:
            raise ValueError(f"{flag} {text}: {key} given twice; {_allowed(keys)}")
        values[key] = value
        if match[2] == "x":
            relative.append(key)
    if not values:
        raise ValueError(f"{flag} {text!r}: no budget given; {_allowed(keys)}")
    return Budget(**values, relative=tuple(relative))


def format_limit(key: str, value: float) -> str:
    return f"{int(value)}" if key == "params" or value == int(value) else f"{value:g}"


def describe(key: str, value: float, profile: str | None = None) -> str:
    """A figure in words: '23,456 parameters', '1.23 ms per query (estimated on rpi4)'."""
    if key == "params":
        return f"{int(value):,} parameters"
    if key == "flops":
        return f"{value:.4g} FLOPs per query"
    if key == "size_mb":
        return f"{value:.4g} MB of weights"
    if key == "decode_ms":
        return f"{value:.4g} ms per decode step (measured here)"
    unit = "ms" if key == "latency_ms" else "uJ"
    where = f" on {profile}" if profile else ""
    return f"{value:.4g} {unit} per query (estimated{where})"


def measure(model: nn.Module, profile: str | EnergyEstimator, seq_len: int) -> dict:
    """Every budget key's figure: parameters, FLOPs, the cost model's ESTIMATED latency and
    energy of one forward pass over seq_len tokens on `profile`, and the weights' shipped
    size."""
    report = estimate_model_energy(model, profile, seq_len=seq_len)
    params = count_params(model)
    return {"params": params, "flops": total(model_cost(model, seq_len)).flops,
            "latency_ms": report.per_query.latency_ms, "energy_uj": report.per_query.energy_uj,
            "size_mb": weight_bytes(model) / 1e6}


def violations(budget: Budget, figures: dict) -> dict[str, tuple[float, float]]:
    """{key: (figure, limit)} for every budget the figures exceed."""
    return {k: (figures[k], v) for k, v in budget.limits().items() if figures[k] > v}


def tt_layers(model: nn.Module) -> list[TTLinear]:
    """Every TT matrix of the model (block projections and the TT embedding's table)."""
    return [m for m in model.modules() if isinstance(m, TTLinear)]


def max_tt_rank(model: nn.Module) -> int:
    return max((max(layer.ranks) for layer in tt_layers(model)), default=1)


def _capped_shape_copy(model: nn.Module) -> tuple[nn.Module, list[TTLinear], list[list]]:
    shadow = copy.deepcopy(model)
    layers = tt_layers(shadow)
    return shadow, layers, [[tuple(c.shape) for c in layer.cores] for layer in layers]


def _set_cap(layers, shapes, cap: int) -> None:
    """Empty cores of the shapes rounding to `cap` gives (each bond min(r, cap))."""
    for layer, original in zip(layers, shapes):
        layer.set_empty_cores([min(s[0], cap) for s in original] + [1])


def figures_at_cap(model: nn.Module, profile, seq_len: int, caps) -> list[tuple[int, dict]]:
    """[(cap, figures)] of the model rounded to each cap, without rounding it."""
    shadow, layers, shapes = _capped_shape_copy(model)
    out = []
    for cap in caps:
        _set_cap(layers, shapes, cap)
        out.append((cap, measure(shadow, profile, seq_len)))
    return out


def smallest_reachable(model: nn.Module, profile, seq_len: int) -> dict:
    """The figures with every TT bond at rank 1 (the model's own for a dense model)."""
    if not tt_layers(model):
        return measure(model, profile, seq_len)
    return figures_at_cap(model, profile, seq_len, [1])[0][1]


def check_feasible(budget: Budget, model: nn.Module, profile: str, seq_len: int) -> None:
    """BudgetError (one line, the smallest figure per violated key) if no rank reaches it."""
    smallest = smallest_reachable(model, profile, seq_len)
    missed = violations(budget, smallest)
    if missed:
        raise BudgetError(unmet_message(budget, missed, smallest, profile,
                                        dense=not tt_layers(model)))


def unmet_message(budget: Budget, missed: dict, smallest: dict, profile: str,
                  dense: bool = False) -> str:
    asked = ",".join(f"{k}={format_limit(k, v)}" for k, (_, v) in missed.items())
    reach = "; ".join(describe(k, smallest[k], profile) for k in missed)
    why = " (the dense arch has no TT ranks to lower)" if dense else " (every TT rank at 1)"
    return f"--budget {asked} cannot be met: the smallest this configuration reaches is " \
           f"{reach}{why}"


def cap_sequence(start: int) -> list[int]:
    """The caps below start: x RANK_STEP each (down by at least one), ending at 1."""
    caps, cap = [], start
    while cap > 1:
        cap = min(cap - 1, int(cap * RANK_STEP))
        caps.append(max(cap, 1))
    return caps


@dataclass(frozen=True)
class Rounding:
    max_rank: int          # the shared cap every TT layer was rounded to
    before: dict
    after: dict
    rel_error: float       # the largest relative Frobenius error a layer took


def fit_to_budget(model: nn.Module, budget: Budget, profile: str, seq_len: int
                  ) -> Rounding | None:
    """Round TT ranks in place until the estimate fits; None if it already does.
    BudgetError if even rank 1 does not (with the smallest figures)."""
    before = measure(model, profile, seq_len)
    if not violations(budget, before):
        return None
    if not tt_layers(model):
        raise BudgetError(unmet_message(budget, violations(budget, before), before, profile,
                                        dense=True))
    chosen = None
    for cap, figures in figures_at_cap(model, profile, seq_len, cap_sequence(max_tt_rank(model))):
        chosen = cap
        if not violations(budget, figures):
            break
    error = 0.0
    for layer in tt_layers(model):
        if max(layer.ranks) > chosen:
            error = max(error, layer.round_(max_rank=chosen))
    after = measure(model, profile, seq_len)
    missed = violations(budget, after)
    if missed:
        raise BudgetError(unmet_message(budget, missed, after, profile))
    return Rounding(chosen, before, after, error)


def rebuild_optimizer(old: torch.optim.Optimizer, model: nn.Module, make) -> torch.optim.Optimizer:
    """A fresh optimizer from make(model) carrying over the state of every parameter that
    survived; replaced (rounded) cores start with no state (AdamW moments reset)."""
    new = make(model)
    alive = {id(p) for p in model.parameters()}
    for param, state in old.state.items():
        if id(param) in alive:
            new.state[param] = state
    return new


def scheduled_steps(steps: int) -> tuple[int, ...]:
    """The steps (counted after the step is taken) at which the budget is enforced."""
    return tuple(sorted({max(1, round(steps * f)) for f in SCHEDULE} | {steps}))
