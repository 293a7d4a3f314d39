"""Hardware profiles (profiles/*.yaml) and the energy estimator built on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qtf_edge.cost import (
    TOTAL_KEY,
    EnergyEstimate,
    EnergyEstimator,
    HardwareProfile,
    ProfileError,
    list_profiles,
    load_profile,
)
from qtf_edge.cost.profiles import REQUIRED_FIGURES
from qtf_edge.resources import data_dir

SHIPPED = [
    "cpu_xeon", "apple_m2", "gpu_a100", "gpu_t4", "edge_tpu",
    "edge_mobile", "rpi4", "rpi5", "quantum_sim",
]

# A tiny synthetic profile with round numbers, for hand-checked arithmetic.
TINY = {
    "name": "tiny",
    "description": "synthetic profile for tests",
    "kind": "cpu",
    "figures": {
        "peak_flops": {"value": 1.0e9, "unit": "FLOP/s", "source": "assumption: test"},
        "memory_bandwidth": {"value": 1.0e8, "unit": "B/s", "source": "assumption: test"},
        "energy_per_flop": {"value": 1000.0, "unit": "fJ", "source": "assumption: test"},
        "energy_per_dram_byte": {"value": 10.0, "unit": "pJ", "source": "assumption: test"},
        "idle_power": {"value": 2.0, "unit": "W", "source": "assumption: test"},
        "active_power": {"value": 3.0, "unit": "W", "source": "assumption: test"},
        "grid_carbon_intensity": {"value": 500.0, "unit": "gCO2/kWh", "source": "assumption: test"},
    },
}


def _write(tmp_path: Path, data, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def _tiny(**figure_overrides) -> dict:
    data = json.loads(json.dumps(TINY))  # deep copy
    for key, value in figure_overrides.items():
        data["figures"][key] = value
    return data


# --- shipped profiles ---------------------------------------------------------------------


def test_data_dir_finds_profiles():
    folder = data_dir("profiles")
    assert folder.is_dir()
    assert (folder / "rpi4.yaml").is_file()
    assert (folder / "README.md").is_file()


def test_list_profiles_has_every_target():
    assert sorted(SHIPPED) == list_profiles()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_with_sources(name):
    p = load_profile(name)
    assert isinstance(p, HardwareProfile)
    assert p.name == name
    assert p.kind in ("cpu", "gpu", "npu", "sim")
    assert p.path.name == f"{name}.yaml"
    assert set(p.sources) == set(REQUIRED_FIGURES)
    for key in REQUIRED_FIGURES:
        assert getattr(p, key) > 0
        assert p.sources[key].strip(), f"{name}: {key} has no source"
    for key, fig in p.optional.items():
        assert fig.source.strip(), f"{name}: optional.{key} has no source"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_is_internally_consistent(name):
    """idle + peak * energy_per_flop ~= active power (README: consistency rule)."""
    p = load_profile(name)
    assert p.idle_power < p.active_power
    at_peak = p.idle_power + p.peak_flops * p.energy_per_flop
    assert at_peak == pytest.approx(p.active_power, rel=0.01)


def test_shipped_profile_units_are_si():
    p = load_profile("rpi4")
    assert p.peak_flops == pytest.approx(4.8e10)
    assert p.energy_per_flop == pytest.approx(77080e-15)  # fJ -> J
    assert p.energy_per_dram_byte == pytest.approx(40e-12)  # pJ -> J
    assert p.figures["energy_per_flop"].unit == "fJ"


def test_load_by_path_equals_load_by_name():
    by_name = load_profile("gpu_t4")
    by_path = load_profile(str(data_dir("profiles") / "gpu_t4.yaml"))
    assert by_name == by_path


# --- errors -------------------------------------------------------------------------------


def test_unknown_name_lists_known_names():
    with pytest.raises(ProfileError) as info:
        load_profile("rpi9")
    msg = str(info.value)
    assert "rpi9" in msg
    for name in SHIPPED:
        assert name in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ProfileError, match="nope.yaml"):
        load_profile(path)


def test_bad_yaml(tmp_path):
    path = _write(tmp_path, "name: [unclosed\nfigures: {\n", "bad.yaml")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    msg = str(info.value)
    assert str(path) in msg and "malformed YAML" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["figures"].pop("memory_bandwidth"), "figures.memory_bandwidth"),
        (lambda d: d.pop("kind"), "kind"),
        (lambda d: d["figures"]["peak_flops"].update(value=-1.0), "figures.peak_flops.value"),
        (lambda d: d["figures"]["idle_power"].update(value=0), "figures.idle_power.value"),
        (lambda d: d["figures"]["peak_flops"].update(value="fast"), "figures.peak_flops.value"),
        (lambda d: d["figures"]["active_power"].update(value=True), "figures.active_power.value"),
        (lambda d: d["figures"]["energy_per_flop"].pop("source"), "figures.energy_per_flop.source"),
        (lambda d: d["figures"]["energy_per_flop"].update(source="  "), "figures.energy_per_flop.source"),
        (lambda d: d["figures"]["energy_per_flop"].update(unit="furlongs"), "figures.energy_per_flop.unit"),
        (lambda d: d["figures"].update(peak_flop=d["figures"]["peak_flops"]), "figures.peak_flop"),
        (lambda d: d.update(kind="fpga"), "kind"),
        (lambda d: d["figures"]["idle_power"].update(value=9.0), "figures.idle_power.value"),
    ],
)
def test_malformed_profile_names_file_and_field(tmp_path, mutate, field):
    data = _tiny()
    mutate(data)
    path = _write(tmp_path, data, "broken.yaml")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {field} "), msg
    assert "\n" not in msg


def test_string_value_message_quotes_the_value(tmp_path):
    data = _tiny(peak_flops={"value": "fast", "unit": "FLOP/s", "source": "x"})
    path = _write(tmp_path, data, "rpi4.yaml")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(info.value) == (
        f"{path}: figures.peak_flops.value must be a positive number, got 'fast'"
    )


def test_yaml11_exponent_string_is_accepted(tmp_path):
    # PyYAML reads `1e9` as the string "1e9"; the loader accepts that spelling.
    text = yaml.safe_dump(_tiny()).replace("1000000000.0", "1e9")
    assert "1e9" in text
    p = load_profile(_write(tmp_path, text))
    assert p.peak_flops == 1e9


def test_profile_error_is_value_error():
    assert issubclass(ProfileError, ValueError)


# --- estimator ----------------------------------------------------------------------------


@pytest.fixture()
def tiny(tmp_path) -> EnergyEstimator:
    return EnergyEstimator(str(_write(tmp_path, _tiny())))


def test_estimate_compute_bound_hand_computed(tiny):
    # 2e9 FLOP at 1e9 FLOP/s = 2 s; 5e7 B at 1e8 B/s = 0.5 s -> compute-bound, 2 s.
    # dynamic = 2e9 * 1e-12 + 5e7 * 1e-11 = 2e-3 + 5e-4 = 2.5e-3 J; static = 2 W * 2 s = 4 J
    # energy = 4.0025 J = 4.0025e6 uJ; CO2 = 4.0025 / 3.6e6 * 500 g
    e = tiny.estimate(2e9, 5e7)
    assert e.latency_ms == pytest.approx(2000.0, rel=1e-12)
    assert e.energy_uj == pytest.approx(4.0025e6, rel=1e-12)
    assert e.co2_g == pytest.approx(4.0025 / 3.6e6 * 500, rel=1e-12)
    assert e.bound == "compute"
    assert e.label == "estimated"
    assert e.profile == "tiny"
    assert (e.flops, e.bytes_moved) == (2e9, 5e7)


def test_estimate_memory_bound_hand_computed(tiny):
    # 1e8 FLOP -> 0.1 s; 1e9 B -> 10 s: memory-bound, 10 s.
    # dynamic = 1e8 * 1e-12 + 1e9 * 1e-11 = 1e-4 + 1e-2 = 0.0101 J; static = 2 W * 10 s = 20 J
    e = tiny.estimate(1e8, 1e9)
    assert e.bound == "memory"
    assert e.latency_ms == pytest.approx(10000.0, rel=1e-12)
    assert e.energy_uj == pytest.approx(20.0101e6, rel=1e-12)
    assert e.co2_g == pytest.approx(20.0101 / 3.6e6 * 500, rel=1e-12)


def test_bound_switches_at_ridge_point(tiny):
    ridge = tiny.profile.ridge_point  # 10 FLOP/byte
    assert ridge == pytest.approx(10.0)
    assert tiny.estimate(ridge * 1e6 * 1.01, 1e6).bound == "compute"
    assert tiny.estimate(ridge * 1e6 * 0.99, 1e6).bound == "memory"


def test_estimate_rejects_bad_counts(tiny):
    for bad in (-1.0, float("nan"), float("inf"), "many", True):
        with pytest.raises(ValueError):
            tiny.estimate(bad, 0.0)
        with pytest.raises(ValueError):
            tiny.estimate(0.0, bad)


def test_zero_work_costs_nothing(tiny):
    e = tiny.estimate(0, 0)
    assert (e.latency_ms, e.energy_uj, e.co2_g) == (0.0, 0.0, 0.0)


def test_to_dict_and_label_cannot_be_overridden(tiny):
    d = tiny.estimate(1e9, 1e6).to_dict()
    assert d["label"] == "estimated"
    assert set(d) == {
        "flops", "bytes_moved", "latency_ms", "energy_uj", "co2_g", "profile", "bound", "label",
    }
    json.dumps(d)
    with pytest.raises(TypeError):
        EnergyEstimate(1, 1, 1, 1, 1, "p", "compute", label="measured")  # type: ignore[call-arg]


def test_estimate_many_sums_per_module_rooflines(tiny):
    costs = {"attn": (2e9, 5e7), "mlp": (1e8, 1e9)}
    out = tiny.estimate_many(costs)
    assert list(out) == ["attn", "mlp", TOTAL_KEY]
    total = out[TOTAL_KEY]
    assert total.latency_ms == pytest.approx(2000.0 + 10000.0, rel=1e-12)
    assert total.energy_uj == pytest.approx(4.0025e6 + 20.0101e6, rel=1e-12)
    assert total.co2_g == pytest.approx(out["attn"].co2_g + out["mlp"].co2_g, rel=1e-12)
    assert (total.flops, total.bytes_moved) == (2.1e9, 1.05e9)
    assert total.bound == "memory"  # 10 s memory-bound vs 2 s compute-bound
    assert total.label == "estimated"
    # One roofline over the summed work would be shorter: modules do not overlap.
    assert total.latency_ms > tiny.estimate(2.1e9, 1.05e9).latency_ms


def test_estimate_many_rejects_reserved_name_and_bad_pairs(tiny):
    with pytest.raises(ValueError, match="reserved"):
        tiny.estimate_many({TOTAL_KEY: (1, 1)})
    with pytest.raises(ValueError, match="pair"):
        tiny.estimate_many({"x": 5})


def test_estimator_accepts_name_and_profile():
    a = EnergyEstimator("rpi5")
    b = EnergyEstimator(load_profile("rpi5"))
    assert a.estimate(1e9, 1e7) == b.estimate(1e9, 1e7)
    with pytest.raises(ProfileError):
        EnergyEstimator("no_such_device")


# --- profiles with a base (run.py --calibrate writes them) ---------------------------------


def _calibrated(**extra) -> dict:
    data = {"name": "my-pi", "description": "calibrated for a test", "kind": "cpu",
            "base": "rpi4",
            "figures": {"peak_flops": {"value": 1.2e10, "unit": "FLOP/s",
                                       "source": "measured: sgemm on the test board"}},
            "optional": {"decode_efficiency": {"value": 0.25, "unit": "fraction",
                                               "source": "measured: run.py --calibrate"}}}
    data.update(extra)
    return data


def test_a_base_fills_what_the_file_does_not_measure(tmp_path):
    rpi4 = load_profile("rpi4")
    p = load_profile(_write(tmp_path, _calibrated(), "my-pi.yaml"))
    assert p.name == "my-pi" and p.base == "rpi4" and rpi4.base is None
    assert p.peak_flops == 1.2e10 and p.sources["peak_flops"].startswith("measured:")
    for key in set(REQUIRED_FIGURES) - {"peak_flops"}:
        assert getattr(p, key) == getattr(rpi4, key)
        assert p.sources[key] == f"from base profile rpi4: {rpi4.sources[key]}"
    assert p.optional["decode_efficiency"].value == 0.25  # its own optional figures
    assert p.optional["cores"].value == 4.0  # and the base's, labelled
    assert p.optional["cores"].source.startswith("from base profile rpi4: ")


def test_a_file_overrides_its_base_and_is_validated_whole(tmp_path):
    own_cores = _calibrated(optional={"cores": {"value": 2, "unit": "count",
                                                "source": "measured: affinity"}})
    assert load_profile(_write(tmp_path, own_cores)).optional["cores"].value == 2
    too_idle = _calibrated()  # idle above the base's active power (6.4 W)
    too_idle["figures"]["idle_power"] = {"value": 9.0, "unit": "W", "source": "measured: x"}
    with pytest.raises(ProfileError, match="idle_power"):
        load_profile(_write(tmp_path, too_idle))


@pytest.mark.parametrize("base", ["cray1", 3, None])
def test_an_unknown_base_names_the_file_and_the_field(tmp_path, base):
    path = _write(tmp_path, _calibrated(base=base), "bad-base.yaml")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert "bad-base.yaml" in message and "base" in message and "rpi4" in message  # known


def test_without_a_base_every_figure_is_required(tmp_path):
    data = _calibrated()
    del data["base"]
    with pytest.raises(ProfileError, match="figures.memory_bandwidth is missing"):
        load_profile(_write(tmp_path, data))
