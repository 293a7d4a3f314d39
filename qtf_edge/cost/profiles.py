"""Hardware cost profiles: load and validate `profiles/*.yaml`.

A profile gives the handful of figures the energy/latency estimator needs (peak FLOP/s,
memory bandwidth, energy per FLOP and per DRAM byte, idle and active power, grid carbon
intensity). Every figure in the YAML is ``{value, unit, source}``; the loader converts values
to SI units (FLOP/s, B/s, J, W, gCO2/kWh) and refuses a file that is malformed, lacks a figure
or a source, uses an unknown unit, or has a non-positive or non-numeric value. Each refusal is a
:class:`ProfileError` with a one-line message naming the file and the field.

A profile may name a shipped profile as its ``base`` (``run.py --calibrate`` writes such
files): it then gives only the figures it measured, and every other figure, optional ones
included, comes from the base with its source prefixed ``from base profile <base>: ``.

The schema is documented in ``profiles/README.md``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


from qtf_edge.resources import check_top_level, named_yaml, read_yaml, shipped_names

__all__ = [
    "Figure",
    "HardwareProfile",
    "ProfileError",
    "REQUIRED_FIGURES",
    "KINDS",
    "list_profiles",
    "load_profile",
]

KINDS = ("cpu", "gpu", "npu", "sim")

# figure name -> {accepted unit: factor to the SI unit stored on HardwareProfile}
_UNITS: dict[str, dict[str, float]] = {
    # FLOP/s (or OP/s for integer accelerators such as the Edge TPU: say so in the source)
    "peak_flops": {
        "FLOP/s": 1.0, "GFLOP/s": 1e9, "TFLOP/s": 1e12,
        "OP/s": 1.0, "GOP/s": 1e9, "TOP/s": 1e12,
    },
    # bytes/s
    "memory_bandwidth": {"B/s": 1.0, "kB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9, "TB/s": 1e12},
    # joules
    "energy_per_flop": {"fJ": 1e-15, "pJ": 1e-12, "nJ": 1e-9, "J": 1.0},
    "energy_per_dram_byte": {"fJ": 1e-15, "pJ": 1e-12, "nJ": 1e-9, "J": 1.0},
    # watts
    "idle_power": {"mW": 1e-3, "W": 1.0},
    "active_power": {"mW": 1e-3, "W": 1.0},
    # gCO2 per kWh
    "grid_carbon_intensity": {"gCO2/kWh": 1.0, "kgCO2/kWh": 1e3},
}

REQUIRED_FIGURES: tuple[str, ...] = tuple(_UNITS)
_TOP_LEVEL_REQUIRED = ("name", "description", "kind", "figures")
_TOP_LEVEL_OPTIONAL = ("optional", "base")

# PyYAML follows YAML 1.1, where `1e9` (no dot, unsigned exponent) is a *string*, not a float.
# Accept exactly that spelling of a number so a profile author is not tripped by it; any other
# string ("fast", "1 GB/s") is refused.
_EXPONENT_NUMBER = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


class ProfileError(ValueError):
    """A hardware profile is unknown, unreadable or invalid (message names file and field)."""


@dataclass(frozen=True)
class Figure:
    """One figure exactly as written in the YAML (value in its own unit)."""

    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class HardwareProfile:
    """A validated hardware profile; every figure is a float in SI units.

    peak_flops: FLOP/s (int8 op/s for integer-only accelerators; see `figures['peak_flops']`)
    memory_bandwidth: bytes/s
    energy_per_flop: joules per FLOP
    energy_per_dram_byte: joules per byte moved to/from DRAM (or the host link)
    idle_power, active_power: watts
    grid_carbon_intensity: grams CO2 per kWh
    sources: figure name -> source text (for every required figure)
    figures: figure name -> Figure as written (value, unit, source)
    optional: extra figures (e.g. ``cores``) as written; not converted
    path: the YAML file the profile came from
    base: the shipped profile the figures this file does not give come from, or None
    """

    name: str
    description: str
    kind: str
    peak_flops: float
    memory_bandwidth: float
    energy_per_flop: float
    energy_per_dram_byte: float
    idle_power: float
    active_power: float
    grid_carbon_intensity: float
    sources: Mapping[str, str] = field(hash=False, repr=False)
    figures: Mapping[str, Figure] = field(hash=False, repr=False)
    optional: Mapping[str, Figure] = field(hash=False, repr=False)
    path: Path = field(repr=False)
    base: str | None = None

    @property
    def ridge_point(self) -> float:
        """Arithmetic intensity (FLOP/byte) above which a kernel is compute-bound."""
        return self.peak_flops / self.memory_bandwidth


def list_profiles() -> list[str]:
    """Names of the shipped profiles (the stems of `profiles/*.yaml`), sorted."""
    return shipped_names("profiles")


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load a shipped profile by name (``"rpi4"``) or any profile YAML by path.

    A string is taken as a path when it ends in ``.yaml``/``.yml`` or contains a path
    separator; otherwise it must be one of :func:`list_profiles`.
    """
    path = named_yaml(name_or_path, "profiles", ProfileError, "hardware profile", "profiles")
    return _parse(read_yaml(path, ProfileError), path)


def _fail(path: Path, field_name: str, msg: str) -> ProfileError:
    return ProfileError(f"{path}: {field_name} {msg}")


def _number(raw: Any) -> float | None:
    """The float value of a YAML scalar, or None if it is not a number."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, str) and _EXPONENT_NUMBER.fullmatch(raw.strip()):
        return float(raw)
    return None


def _parse_figure(raw: Any, path: Path, key: str, units: Mapping[str, float] | None) -> Figure:
    if not isinstance(raw, dict):
        raise _fail(path, key, f"must be a mapping with value, unit and source, got {raw!r}")
    for part in ("value", "unit", "source"):
        if part not in raw:
            raise _fail(path, f"{key}.{part}", "is missing")
    extra = sorted(set(raw) - {"value", "unit", "source"})
    if extra:
        raise _fail(path, f"{key}.{extra[0]}", "is not a known field (expected value, unit, source)")
    value = _number(raw["value"])
    if value is None or not math.isfinite(value) or value <= 0:
        raise _fail(path, f"{key}.value", f"must be a positive number, got {raw['value']!r}")
    unit = raw["unit"]
    if not isinstance(unit, str) or not unit.strip():
        raise _fail(path, f"{key}.unit", f"must be a non-empty string, got {unit!r}")
    if units is not None and unit not in units:
        raise _fail(path, f"{key}.unit", f"{unit!r} is not a known unit (expected one of: {', '.join(units)})")
    source = raw["source"]
    if not isinstance(source, str) or not source.strip():
        raise _fail(path, f"{key}.source", f"must be a non-empty string, got {source!r}")
    return Figure(value=value, unit=unit, source=" ".join(source.split()))


def _parse(data: Any, path: Path) -> HardwareProfile:
    check_top_level(data, path, _TOP_LEVEL_REQUIRED, _TOP_LEVEL_OPTIONAL, _fail)
    for key in ("name", "description"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise _fail(path, key, f"must be a non-empty string, got {data[key]!r}")
    if data["kind"] not in KINDS:
        raise _fail(path, "kind", f"must be one of {', '.join(KINDS)}, got {data['kind']!r}")

    base = _base(data, path)
    raw_figures = data["figures"]
    if not isinstance(raw_figures, dict):
        raise _fail(path, "figures", f"must be a mapping, got {raw_figures!r}")
    for key in REQUIRED_FIGURES:
        if key not in raw_figures and base is None:
            raise _fail(path, f"figures.{key}", "is missing")
    extra = sorted(set(raw_figures) - set(REQUIRED_FIGURES), key=str)
    if extra:
        raise _fail(path, f"figures.{extra[0]}", "is not a known figure (put extras under optional:)")
    figures = {} if base is None else _inherited(base.figures, base.name)
    figures.update({
        key: _parse_figure(raw_figures[key], path, f"figures.{key}", _UNITS[key])
        for key in REQUIRED_FIGURES if key in raw_figures
    })
    figures = {key: figures[key] for key in REQUIRED_FIGURES}

    raw_optional = data.get("optional") or {}
    if not isinstance(raw_optional, dict):
        raise _fail(path, "optional", f"must be a mapping, got {raw_optional!r}")
    optional = {} if base is None else _inherited(base.optional, base.name)
    optional.update({
        str(key): _parse_figure(raw, path, f"optional.{key}", None)
        for key, raw in raw_optional.items()
    })

    si = {key: fig.value * _UNITS[key][fig.unit] for key, fig in figures.items()}
    if si["idle_power"] > si["active_power"]:
        raise _fail(
            path, "figures.idle_power.value",
            f"({si['idle_power']} W) must not exceed figures.active_power.value ({si['active_power']} W)",
        )
    return HardwareProfile(
        name=data["name"].strip(),
        description=" ".join(data["description"].split()),
        kind=data["kind"],
        **si,
        sources={key: fig.source for key, fig in figures.items()},
        figures=figures,
        optional=optional,
        path=path,
        base=None if base is None else base.name,
    )


def _base(data: Mapping, path: Path) -> HardwareProfile | None:
    """The shipped profile named by the file's `base`, or None without one. Only a shipped
    profile can be a base, so a chain of bases never forms."""
    if "base" not in data:
        return None
    name = data["base"]
    known = list_profiles()
    if not isinstance(name, str) or name not in known:
        raise _fail(path, "base", f"{name!r} is not a shipped profile (known: {', '.join(known)})")
    return load_profile(name)


def _inherited(figures: Mapping[str, Figure], base: str) -> dict[str, Figure]:
    """The base's figures, each source saying where it came from."""
    return {key: Figure(fig.value, fig.unit, f"from base profile {base}: {fig.source}")
            for key, fig in figures.items()}
