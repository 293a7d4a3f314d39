"""Estimated energy, CO2 and roofline latency of a model on a hardware profile.

Every figure here is an estimate (FLOPs and bytes from cost.counts, times a profile's
datasheet-level rates) and is labelled so; measured figures come from `profile` (later).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qtf_edge.cost.counts import model_cost
from qtf_edge.cost.energy import TOTAL_KEY, EnergyEstimate, EnergyEstimator
from qtf_edge.model import QTensorFormer


@dataclass(frozen=True)
class ModelEnergyEstimate:
    profile: str
    seq_len: int
    per_query: EnergyEstimate           # one forward pass over seq_len tokens
    per_part: dict[str, EnergyEstimate]  # the same, split by part (embedding, ffn, ...)
    per_decoded_token: EnergyEstimate   # one KV-cached step with seq_len tokens of context
    label: str = field(default="estimated", init=False)

    def to_dict(self) -> dict:
        return {"profile": self.profile, "seq_len": self.seq_len, "label": self.label,
                "per_query": self.per_query.to_dict(),
                "per_decoded_token": self.per_decoded_token.to_dict(),
                "per_part": {part: e.to_dict() for part, e in self.per_part.items()}}


def _estimate_parts(model, estimator, n_tokens, context) -> dict[str, EnergyEstimate]:
    costs = model_cost(model, n_tokens, context)
    return estimator.estimate_many({p: (c.flops, c.bytes_moved) for p, c in costs.items()})


def estimate_model_energy(model: QTensorFormer, estimator: EnergyEstimator | str,
                          seq_len: int = 128) -> ModelEnergyEstimate:
    """Per query (a forward over seq_len tokens) and per decoded token, on one profile."""
    if not isinstance(estimator, EnergyEstimator):
        estimator = EnergyEstimator(estimator)
    query = _estimate_parts(model, estimator, seq_len, seq_len)
    decode = _estimate_parts(model, estimator, 1, seq_len)
    per_query = query.pop(TOTAL_KEY)
    return ModelEnergyEstimate(estimator.profile.name, seq_len, per_query, query,
                               decode[TOTAL_KEY])
