"""The report's figures: the finished rows and their latencies (Results), looked up by
(group, size, variant), and the number formatting every table uses."""

from __future__ import annotations

import statistics

from qtf_edge.presets import PRESETS

from .plan import ENERGY_PROFILES, Layout, Row, read_json

# ---------------------------------------------------------------------------- report: figures

def fmt(value, spec: str = ".3g", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def spread(values: list[float]) -> dict | None:
    """Mean, sample standard deviation (None for one value), min, max and n."""
    if not values:
        return None
    return {"mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values)}


def fmt_spread(s: dict | None, spec: str = ".1f") -> str:
    if s is None:
        return "-"
    if s["sd"] is None:
        return format(s["mean"], spec)
    return f"{format(s['mean'], spec)} ± {format(s['sd'], spec)} (n={s['n']})"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


class Results:
    """The finished rows and their latencies, looked up by (group, size, variant)."""

    def __init__(self, layout: Layout, plan: list[Row]):
        self.plan = plan
        self.rows = {r.name: read_json(layout.result(r)) for r in plan}
        self.latency = {r.name: read_json(layout.latency(r)) for r in plan}
        self.vocab_size = plan[0].train["vocab_size"]

    def width(self, size: str) -> int:
        """d_model of a size's core/scale rows in this plan."""
        row = next(r for r in self.plan if r.size == size and r.variant == "qtf")
        return {**PRESETS[size][0], **row.model}["d_model"]

    def evaluated_tokens(self) -> set[int]:
        return {r["evaluation"]["tokens"] for r in self.rows.values()
                if r and r.get("status") == "done"}

    def runs(self, group: str, size: str, variant: str) -> list[dict]:
        prefix = f"{group}/{size}/{variant}/"
        return [v for k, v in self.rows.items()
                if k.startswith(prefix) and v and v.get("status") == "done"]

    def row_names(self, group: str, size: str, variant: str) -> list[str]:
        return [r.name for r in self.plan if r.name.startswith(f"{group}/{size}/{variant}/")]

    def figures(self, group: str, size: str, variant: str) -> dict:
        """Every figure of one architecture: parameters, MB, perplexity over its seeds,
        estimates, routed share, measured latency (seed 0)."""
        runs = self.runs(group, size, variant)
        names = self.row_names(group, size, variant)
        latency = self.latency.get(names[0]) if names else None
        if latency and "error" in latency:
            latency = {"error": latency["error"]}
        if not runs:
            return {"rows": names, "finished": 0, "latency": latency}
        first = runs[0]
        params = first["description"]["params"]["total"]
        estimates = {p: first["description"]["estimates"][p] for p in ENERGY_PROFILES}
        routed = [r["evaluation"]["routed_fraction"] for r in runs
                  if r["evaluation"]["routed_fraction"] is not None]
        return {
            "rows": names, "finished": len(runs), "params": params,
            "weights_mb": params * 4 / 1e6,
            "perplexity_per_word": spread([r["evaluation"]["perplexity_per_word"] for r in runs]),
            "perplexity_per_token": spread([r["evaluation"]["perplexity_per_token"]
                                            for r in runs]),
            "energy_uj_per_query": {p: e["per_query"]["energy_uj"] for p, e in estimates.items()},
            "energy_uj_per_decoded_token": {p: e["per_decoded_token"]["energy_uj"]
                                            for p, e in estimates.items()},
            "query_tokens": first["description"]["flops"]["query_tokens"],
            "quantum_path_usage": spread(routed),
            "latency": latency,
            "decode_ms": latency.get("decode_ms") if latency else None,
            "training": {k: first["training"][k] for k in ("steps", "tokens_seen", "batch_size",
                                                          "context_length")},
            "budget": first["training"].get("budget"),
            "budget_error": first.get("budget_error"),
            "tt_ranks": first["description"]["tt_ranks"],
        }

    def status(self, group: str, size: str, variant: str) -> str:
        rows = [self.rows.get(n) for n in self.row_names(group, size, variant)]
        states = [r["status"] if r else "not trained" for r in rows]
        return ", ".join(sorted(set(states)))


def ppl(figures: dict) -> float | None:
    s = figures.get("perplexity_per_word")
    return s["mean"] if s else None


def energy(figures: dict, profile: str) -> float | None:
    return (figures.get("energy_uj_per_query") or {}).get(profile)
