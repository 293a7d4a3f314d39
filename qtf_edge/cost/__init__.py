"""Cost model: counts per module, hardware profiles and latency/energy/CO2 estimates
(estimates, never measurements)."""

from qtf_edge.cost.counts import Cost, count_params, model_cost, total
from qtf_edge.cost.energy import TOTAL_KEY, EnergyEstimate, EnergyEstimator
from qtf_edge.cost.model_energy import ModelEnergyEstimate, estimate_model_energy
from qtf_edge.cost.profiles import (
    Figure,
    HardwareProfile,
    ProfileError,
    list_profiles,
    load_profile,
)

__all__ = [
    "Cost",
    "ModelEnergyEstimate",
    "count_params",
    "estimate_model_energy",
    "model_cost",
    "total",
    "EnergyEstimate",
    "EnergyEstimator",
    "Figure",
    "HardwareProfile",
    "ProfileError",
    "TOTAL_KEY",
    "list_profiles",
    "load_profile",
]
