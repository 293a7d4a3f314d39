"""What a run folder holds, in numbers: parameters and FLOPs per part, compression
against the dense model of the same shape, its lineage, and cost-model estimates of
latency, energy and CO2 on every shipped hardware profile.

Every latency, energy and CO2 figure here comes from the cost model (FLOPs and bytes
times a profile's datasheet rates) and is labelled "estimated": none is a measurement.
"""

from __future__ import annotations

from qtf_edge.cost import estimate_model_energy, list_profiles, model_cost, total
from qtf_edge.cost.counts import PARTS, compression_ratio, count_params, flops_per_token
from qtf_edge.cost.energy import EnergyEstimator
from qtf_edge.runs import Run
from qtf_edge.tt import TTLinear

__all__ = ["QUERY_TOKENS", "describe_run"]

QUERY_TOKENS = 128  # a "query" is one forward pass over this many tokens (or the context)
ESTIMATE_FIELDS = ("latency_ms", "energy_uj", "co2_g", "bound", "label")


def _lineage_summary(lineage: dict) -> dict:
    parent = lineage.get("parent") or {}
    return {"command": lineage.get("command"), "created_utc": lineage.get("created_utc"),
            "package_version": lineage.get("package_version"),
            "parent_path": parent.get("path"), "parent_model_sha256": parent.get("model_sha256"),
            "files": sorted(lineage.get("files", {}))}


def _estimate(estimate) -> dict:
    values = estimate.to_dict()
    return {key: values[key] for key in ESTIMATE_FIELDS}


def describe_run(run: Run, profiles: list[str] | None = None) -> dict:
    """A JSON-ready description of a loaded run (see the module docstring).

    FLOPs per decoded token are for one KV-cached step at full context; a query is a
    forward over min(QUERY_TOKENS, context_length) tokens. profiles: names to estimate
    on (default: every shipped profile, `list_profiles()`).
    """
    model, config = run.model, run.config
    context = config.context_length
    query = min(QUERY_TOKENS, context)
    parts = model_cost(model, query)
    params = {part: parts[part].params for part in PARTS}
    params["total"] = count_params(model)
    ratio = compression_ratio(model)
    estimates = {}
    for name in profiles if profiles is not None else list_profiles():
        estimator = EnergyEstimator(name)
        per_query = estimate_model_energy(model, estimator, seq_len=query).per_query
        per_token = estimate_model_energy(model, estimator, seq_len=context).per_decoded_token
        estimates[name] = {"label": "estimated", "per_query": _estimate(per_query),
                           "per_decoded_token": _estimate(per_token)}
    return {
        "run": str(run.path),
        "form": run.form,
        "architecture": "dense" if config.is_dense else "qtf",
        "params": params,
        "dense_params": round(params["total"] * ratio),
        "compression_ratio": ratio,
        "flops": {"per_decoded_token": flops_per_token(model, context),
                  "decode_context": context,
                  "per_query": total(parts).flops, "query_tokens": query},
        "config": config.to_dict(),
        # The ranks the layers have: below the config's tt_rank after rounding or compress.
        "tt_ranks": {name: list(m.ranks[1:-1]) for name, m in model.named_modules()
                     if isinstance(m, TTLinear)},
        "lineage": _lineage_summary(run.lineage),
        "estimates": estimates,
    }
