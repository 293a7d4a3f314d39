"""Predict a decode step's latency and energy on a device that is not here.

    predicted_ms = target_roofline_ms / host_efficiency
    host_efficiency = host_roofline_ms / host_measured_ms

The roofline (cost.energy.EnergyEstimator) of the step's per-part FLOPs and bytes gives a
lower bound on each profile; the host's measured time on the same graph says how far real
kernels stay from that bound, and the prediction assumes the target's kernels stay as far
from its own. That assumption is the prediction's main error: a runtime's per-op overheads,
cache sizes and SIMD width differ between machines, so a `--calibrate`d profile measured
on the device replaces it. Energy: the target profile's dynamic energy for those FLOPs and
bytes plus its idle power over the predicted time, labelled "predicted" like the latency.
"""

from __future__ import annotations

from collections.abc import Mapping

from qtf_edge.cost.energy import J_PER_KWH, TOTAL_KEY, EnergyEstimator
from qtf_edge.cost.profiles import HardwareProfile, load_profile

PREDICTED = "predicted"
ESTIMATED = "estimated"
MEASURED = "measured"


def roofline_ms(workload: Mapping[str, tuple[float, float]], profile) -> float:
    """Sum over parts of max(FLOPs / peak, bytes / bandwidth), in ms."""
    return EnergyEstimator(profile).estimate_many(workload)[TOTAL_KEY].latency_ms


def predict(workload: Mapping[str, tuple[float, float]], measured_ms: float,
            host: str | HardwareProfile, target: str | HardwareProfile) -> dict:
    """One decode step on `target`, from its workload {part: (flops, bytes)} and the
    time `measured_ms` it took on `host` (the profile describing this machine)."""
    if not measured_ms > 0:
        raise ValueError(f"measured time must be > 0 ms, got {measured_ms!r}")
    host = host if isinstance(host, HardwareProfile) else load_profile(host)
    target = target if isinstance(target, HardwareProfile) else load_profile(target)
    efficiency = roofline_ms(workload, host) / measured_ms
    estimate = EnergyEstimator(target).estimate_many(workload)[TOTAL_KEY]
    latency_ms = estimate.latency_ms / efficiency
    dynamic_j = (estimate.flops * target.energy_per_flop
                 + estimate.bytes_moved * target.energy_per_dram_byte)
    energy_j = dynamic_j + target.idle_power * latency_ms / 1e3
    return {"profile": target.name, "label": PREDICTED, "latency_ms": latency_ms,
            "tokens_per_s": 1e3 / latency_ms, "energy_uj": energy_j * 1e6,
            "co2_g": energy_j / J_PER_KWH * target.grid_carbon_intensity,
            "target_roofline_ms": estimate.latency_ms, "host_efficiency": efficiency,
            "bound": estimate.bound, "sources": dict(target.sources)}


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
            "co2_g": energy_j / J_PER_KWH * host.grid_carbon_intensity, "power_w": power,
            "method": f"{host.name}: idle {host.idle_power:g} W + {share:.3g} x (active "
                      f"{host.active_power:g} W - idle) = {power:.3g} W, x measured time",
            "sources": {k: host.sources[k] for k in ("idle_power", "active_power")}}
