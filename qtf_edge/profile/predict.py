"""Predict a decode step's (and a query's) latency and energy on a device that is not here.

    predicted_ms = target_roofline_ms / efficiency
    efficiency   = the target's own decode_efficiency where its profile was calibrated on
                   the device (run.py --calibrate), else the host's:
    host_efficiency = host_roofline_ms / host_measured_ms

The roofline (cost.energy.EnergyEstimator) of the step's per-part FLOPs and bytes gives a
lower bound on each profile; the measured time on the same graph says how far real kernels
stay from that bound. With the host's efficiency the prediction assumes the target's
kernels stay as far from its own bound as this machine's do: its main error, since a
runtime's per-op overheads, cache sizes and SIMD width differ between machines. A
calibrated profile replaces that assumption with a measurement on the device. Energy: the
target profile's dynamic energy for those FLOPs and bytes plus its idle power over the
predicted time, labelled "predicted" like the latency.

A query is what one timed generation does: the prompt's prefill (predicted the same way,
from the host's measured prefill; the device calibrates decode only), then decode_steps
decode steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qtf_edge.cost.energy import J_PER_KWH, TOTAL_KEY, EnergyEstimator
from qtf_edge.cost.profiles import HardwareProfile, load_profile

PREDICTED = "predicted"
ESTIMATED = "estimated"
MEASURED = "measured"
CALIBRATED_FIGURE = "decode_efficiency"  # an optional figure run.py --calibrate writes
CALIBRATED_THREADS = "decode_threads"    # the threads it was measured with
FROM_HOST, FROM_DEVICE = "host", "calibrated on device"

Workload = Mapping[str, tuple[float, float]]


@dataclass(frozen=True)
class Query:
    """One query as measured here: a prompt's prefill (its workload and the host's
    measured ms; None where there is none) followed by `decode_steps` decode steps."""

    decode_steps: int
    prefill_workload: Workload | None = None
    prefill_ms: float | None = None


def roofline_ms(workload: Workload, profile) -> float:
    """Sum over parts of max(FLOPs / peak, bytes / bandwidth), in ms."""
    return EnergyEstimator(profile).estimate_many(workload)[TOTAL_KEY].latency_ms


def efficiency(workload: Workload, measured_ms: float, profile: HardwareProfile) -> float:
    """How close a measured time came to the profile's roofline (1 = on it)."""
    if not measured_ms > 0:
        raise ValueError(f"measured time must be > 0 ms, got {measured_ms!r}")
    return roofline_ms(workload, profile) / measured_ms


def calibrated_efficiency(profile: HardwareProfile) -> float | None:
    """The decode efficiency measured on the device itself, where the profile has one."""
    figure = profile.optional.get(CALIBRATED_FIGURE)
    return None if figure is None else figure.value


def _step(workload: Workload, step_efficiency: float, target: HardwareProfile) -> dict:
    """Predicted latency (ms) and energy (J) of one step on `target`."""
    estimate = EnergyEstimator(target).estimate_many(workload)[TOTAL_KEY]
    latency_ms = estimate.latency_ms / step_efficiency
    dynamic_j = (estimate.flops * target.energy_per_flop
                 + estimate.bytes_moved * target.energy_per_dram_byte)
    return {"latency_ms": latency_ms, "roofline_ms": estimate.latency_ms,
            "energy_j": dynamic_j + target.idle_power * latency_ms / 1e3,
            "bound": estimate.bound}


def co2_g(energy_j: float, profile: HardwareProfile) -> float:
    """Grams of CO2 for `energy_j` joules at the profile's grid intensity."""
    return energy_j / J_PER_KWH * profile.grid_carbon_intensity


def predict(workload: Workload, measured_ms: float, host: str | HardwareProfile,
            target: str | HardwareProfile, query: Query | None = None) -> dict:
    """One decode step on `target`, from its workload {part: (flops, bytes)} and the
    time `measured_ms` it took on `host` (the profile describing this machine); with
    `query`, also one query (see the module docstring)."""
    host = host if isinstance(host, HardwareProfile) else load_profile(host)
    target = target if isinstance(target, HardwareProfile) else load_profile(target)
    host_efficiency = efficiency(workload, measured_ms, host)
    calibrated = calibrated_efficiency(target)
    step = _step(workload, calibrated or host_efficiency, target)
    result = {"profile": target.name, "label": PREDICTED, "latency_ms": step["latency_ms"],
              "tokens_per_s": 1e3 / step["latency_ms"], "energy_uj": step["energy_j"] * 1e6,
              "co2_g": co2_g(step["energy_j"], target),
              "target_roofline_ms": step["roofline_ms"], "bound": step["bound"],
              "efficiency": calibrated or host_efficiency,
              "efficiency_from": FROM_HOST if calibrated is None else FROM_DEVICE,
              "host_efficiency": host_efficiency, "sources": dict(target.sources)}
    if query is not None:
        result["query"] = _query(query, step, host, target)
    return result


def _query(query: Query, decode: dict, host: HardwareProfile, target: HardwareProfile) -> dict:
    prefill = None
    if query.prefill_workload is not None and query.prefill_ms is not None:
        prefill = _step(query.prefill_workload,
                        efficiency(query.prefill_workload, query.prefill_ms, host), target)
    latency_ms = query.decode_steps * decode["latency_ms"]
    energy_j = query.decode_steps * decode["energy_j"]
    if prefill is not None:
        latency_ms += prefill["latency_ms"]
        energy_j += prefill["energy_j"]
    return {"decode_steps": query.decode_steps, "covers": (
                f"prefill + {query.decode_steps} decode steps" if prefill is not None
                else f"{query.decode_steps} decode steps only (no prefill to predict from)"),
            "prefill_ms": None if prefill is None else prefill["latency_ms"],
            "latency_ms": latency_ms, "energy_uj": energy_j * 1e6,
            "co2_g": co2_g(energy_j, target)}


def host_energy(measured_ms: float, host: str | HardwareProfile, threads: int) -> dict:
    """Energy of a measured step where no counter measures it, labelled estimated: the
    host profile's idle power plus its active-minus-idle power for the share of its cores
    in use (`threads` of `cores`; all of it if the profile does not say), over the
    measured time."""
    host = host if isinstance(host, HardwareProfile) else load_profile(host)
    cores = host.optional.get("cores")
    share = 1.0 if cores is None else min(1.0, threads / cores.value)
    power = host.idle_power + (host.active_power - host.idle_power) * share
    energy_j = power * measured_ms / 1e3
    return {"label": ESTIMATED, "profile": host.name, "energy_uj": energy_j * 1e6,
            "co2_g": co2_g(energy_j, host), "power_w": power,
            "method": f"{host.name}: idle {host.idle_power:g} W + {share:.3g} x (active "
                      f"{host.active_power:g} W - idle) = {power:.3g} W, x measured time",
            "sources": {k: host.sources[k] for k in ("idle_power", "active_power")}}
