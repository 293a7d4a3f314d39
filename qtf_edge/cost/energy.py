"""Estimate latency, energy and CO2 of a workload from a hardware profile.

Everything here is an ESTIMATE from datasheet-level figures, and is labelled so
(``EnergyEstimate.label == "estimated"``, always). Measured figures come from other code and
must never be confused with these.

Model, for a workload of ``F`` FLOPs moving ``B`` bytes to/from DRAM on profile ``p``:

* latency (roofline)::

      t = max(F / p.peak_flops, B / p.memory_bandwidth)

  ``bound`` is ``"memory"`` when the byte term is strictly larger, else ``"compute"``.
  This is a lower bound on time: it assumes peak rates and perfect overlap of compute and
  memory traffic within the workload.

* energy = dynamic + static::

      E_dynamic = F * p.energy_per_flop + B * p.energy_per_dram_byte
      E_static  = p.idle_power * t
      E         = E_dynamic + E_static

  The shipped profiles set ``energy_per_flop = (active_power - idle_power) / peak_flops``,
  so a compute-bound workload at peak draws exactly ``active_power`` (plus the DRAM term).

* CO2::

      co2_g = E [kWh] * p.grid_carbon_intensity    (E [kWh] = E [J] / 3.6e6)

Several modules (:meth:`EnergyEstimator.estimate_many`): each module gets its own roofline and
the total is the sum of the module latencies and energies. Modules of a transformer run one
after another, so one module's compute cannot hide another's memory traffic; one roofline over
the summed FLOPs and bytes would assume exactly that overlap and underestimate latency (and
the idle energy that scales with it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from qtf_edge.cost.profiles import HardwareProfile, load_profile

__all__ = ["EnergyEstimate", "EnergyEstimator", "TOTAL_KEY", "J_PER_KWH"]

TOTAL_KEY = "total"
J_PER_KWH = 3.6e6


@dataclass(frozen=True)
class EnergyEstimate:
    """Estimated cost of one workload on one profile (never a measurement)."""

    flops: float
    bytes_moved: float
    latency_ms: float
    energy_uj: float
    co2_g: float
    profile: str
    bound: str  # "compute" or "memory"
    label: str = field(default="estimated", init=False)

    def __post_init__(self) -> None:
        if self.bound not in ("compute", "memory"):
            raise ValueError(f"bound must be 'compute' or 'memory', got {self.bound!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) including ``label: "estimated"``."""
        return asdict(self)


def _check_count(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return v


class EnergyEstimator:
    """Roofline latency + dynamic/static energy + CO2 estimates for one hardware profile."""

    def __init__(self, profile: str | Path | HardwareProfile) -> None:
        self.profile: HardwareProfile = (
            profile if isinstance(profile, HardwareProfile) else load_profile(profile)
        )

    def __repr__(self) -> str:
        return f"EnergyEstimator(profile={self.profile.name!r})"

    def estimate(self, flops: float, bytes_moved: float) -> EnergyEstimate:
        """Estimate one workload of ``flops`` FLOPs moving ``bytes_moved`` DRAM bytes."""
        p = self.profile
        f = _check_count("flops", flops)
        b = _check_count("bytes_moved", bytes_moved)
        t_compute = f / p.peak_flops
        t_memory = b / p.memory_bandwidth
        latency_s = max(t_compute, t_memory)
        energy_j = f * p.energy_per_flop + b * p.energy_per_dram_byte + p.idle_power * latency_s
        return EnergyEstimate(
            flops=f,
            bytes_moved=b,
            latency_ms=latency_s * 1e3,
            energy_uj=energy_j * 1e6,
            co2_g=energy_j / J_PER_KWH * p.grid_carbon_intensity,
            profile=p.name,
            bound="memory" if t_memory > t_compute else "compute",
        )

    def estimate_many(
        self, costs: Mapping[str, tuple[float, float]]
    ) -> dict[str, EnergyEstimate]:
        """Estimate each module ``name -> (flops, bytes)`` and add a ``"total"`` entry.

        The total sums the per-module latencies, energies, CO2, FLOPs and bytes (modules run
        one after another; see the module docstring). Its ``bound`` is the bound of the
        modules that account for the larger share of the total latency.
        """
        if TOTAL_KEY in costs:
            raise ValueError(f"module name {TOTAL_KEY!r} is reserved for the sum")
        out: dict[str, EnergyEstimate] = {}
        for name, pair in costs.items():
            try:
                flops, bytes_moved = pair
            except (TypeError, ValueError):
                raise ValueError(
                    f"costs[{name!r}] must be a (flops, bytes) pair, got {pair!r}"
                ) from None
            out[name] = self.estimate(flops, bytes_moved)
        mods = list(out.values())
        latency = {"compute": 0.0, "memory": 0.0}
        for e in mods:
            latency[e.bound] += e.latency_ms
        out[TOTAL_KEY] = EnergyEstimate(
            flops=math.fsum(e.flops for e in mods),
            bytes_moved=math.fsum(e.bytes_moved for e in mods),
            latency_ms=math.fsum(e.latency_ms for e in mods),
            energy_uj=math.fsum(e.energy_uj for e in mods),
            co2_g=math.fsum(e.co2_g for e in mods),
            profile=self.profile.name,
            bound="memory" if latency["memory"] > latency["compute"] else "compute",
        )
        return out
