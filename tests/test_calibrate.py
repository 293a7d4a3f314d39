"""run.py --calibrate (runtimes/calibrate.py, which run.py loads from beside it): the
device-side measurements (without torch or qtf_edge), the decode workload export writes
for it, the profile it writes (loaded through its base), predictions from that profile,
and bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from run_factory import export_dense_run
from tokenizers import Tokenizer

from cli_helpers import invoke
from qtf_edge.cost.profiles import list_profiles, load_profile
from qtf_edge.export.bundle import calibration_module, runner_module, verify_bundle
from qtf_edge.export.workload import decode_context, graph_lowering, step_workload
from qtf_edge.profile.pipeline import ProfileOptions, profile_path
from qtf_edge.profile.predict import roofline_ms
from qtf_edge.runs import load_run

runner = runner_module()
calibration = calibration_module()  # calibrate.py, as run.py loads it
# run.py with torch and qtf_edge unimportable, as on a device that has neither
POISONED = ("import runpy, sys; sys.modules['torch'] = None; sys.modules['qtf_edge'] = None; "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
SMALL = dict(copy_mib=4, sgemm_size=64, repeats=2, idle_seconds=0.05, runs=2)


def run_py(folder: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", POISONED, str(folder / "run.py"), str(folder),
                           *map(str, args)], capture_output=True, text=True, timeout=300,
                          check=False, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def rapl_zone(root: Path, energy_uj: int) -> Path:
    """A powercap folder with one package zone, as /sys/class/powercap lays it out."""
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    return zone


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return export_dense_run(tmp_path_factory.mktemp("calibrate"), "rpi")


def test_calibration_bases_are_the_shipped_cpu_profiles():
    assert list(runner.CALIBRATION_BASES) == [name for name in list_profiles()
                                              if load_profile(name).kind == "cpu"]


def test_the_runner_roofline_is_the_cost_models():
    parts = {"matmul": (1e9, 1e6), "weights": (1e6, 1e9), "idle": (0.0, 0.0)}
    for name in ("rpi4", "cpu_xeon"):
        p = load_profile(name)
        assert math.isclose(calibration.roofline_ms(parts, p.peak_flops, p.memory_bandwidth),
                            roofline_ms(parts, p))


def test_export_writes_the_decode_workload_the_profiler_counts(bundle):
    source, folder, _ = bundle
    manifest = verify_bundle(folder)
    workload = calibration.decode_workload(manifest)
    assert workload["context"] == decode_context(workload["prompt_tokens"],
                                                 workload["new_tokens"])
    assert workload["prompt_tokens"] + workload["new_tokens"] < manifest["context_length"]
    expected = step_workload(load_run(source).model, 1, workload["context"],
                             graph_lowering(manifest, "decode"))
    assert workload["parts"] == expected
    assert calibration.decode_workload({"files": []}) is None  # an older bundle
    with pytest.raises(runner.BundleError, match="decode_workload"):
        calibration.decode_workload({"decode_workload": {"context": 9, "parts": []}})


def test_sgemm_runs_in_a_child_with_its_blas_threads_pinned(tmp_path, monkeypatch):
    result = calibration.sgemm_flops_on_threads(1, size=64, repeats=2, rapl_root=tmp_path / "none")
    assert result["threads"] == 1 and result["flops_per_s"] > 1e6 and result["seconds"] > 0
    assert result["joules"] is None  # no counters in that folder
    assert calibration.copy_bandwidth(mib=4, repeats=2) > 1e8
    seen = {}

    def child(command, **kwargs):  # what the child would be started with
        seen.update(kwargs["env"])
        return subprocess.CompletedProcess(command, 0, json.dumps(
            {"flops_per_s": 1.0, "seconds": 1.0, "joules": None}), "")

    monkeypatch.setattr(calibration.subprocess, "run", child)
    calibration.sgemm_flops_on_threads(3, size=8, repeats=1)
    assert all(seen[name] == "3" for name in calibration.BLAS_THREAD_VARIABLES)


def test_rapl_energy_on_a_powercap_fixture(tmp_path):
    zone = rapl_zone(tmp_path, 1_000_000)
    joules, seconds = runner.rapl_energy(
        lambda: (zone / "energy_uj").write_text("3500000\n"), tmp_path)
    assert joules == pytest.approx(2.5) and seconds > 0
    assert runner.rapl_energy(lambda: None, tmp_path / "none")[0] is None


MEASURED = {"cpus": 4, "repeats": 5, "copy_mib": 128, "bandwidth": 4.0e9, "sgemm_size": 2048,
            "numpy": "2.0", "rapl_root": "/sys/class/powercap",
            "sgemm": {"flops_per_s": 1.5e10, "seconds": 4.0, "joules": 24.0, "threads": 4},
            "idle": {"joules": 5.4, "seconds": 2.0},
            "decode": {"decode_ms": 2.0, "steps": 150, "roofline_ms": 0.5, "efficiency": 0.25,
                       "threads": 1, "runs": 10, "context": 40, "onnxruntime": "1.20"}}
MANIFEST = {"target": "rpi", "created": "2026-11-26T00:00:00Z",
            "source": {"model_sha256": "ab" * 32}}


def test_the_written_profile_loads_through_its_base(tmp_path):
    text, left_out = calibration.calibrated_profile(MEASURED, MANIFEST, "my-pi", "rpi4",
                                                    "python run.py b --calibrate p.yaml", "pi",
                                                    "2026-11-26 10:00 UTC")
    path = tmp_path / "my-pi.yaml"
    path.write_text(text)
    p, rpi4 = load_profile(path), load_profile("rpi4")
    assert left_out == [] and p.name == "my-pi" and p.base == "rpi4" and p.kind == "cpu"
    assert p.peak_flops == 1.5e10 and p.memory_bandwidth == 4.0e9
    # RAPL: 24 J over 4 s of sgemm = 6 W active; 5.4 J over 2 s of sleep = 2.7 W idle
    assert math.isclose(p.active_power, 6.0) and math.isclose(p.idle_power, 2.7)
    for key in ("peak_flops", "memory_bandwidth", "idle_power", "active_power"):
        assert p.sources[key].startswith("measured: python run.py b --calibrate p.yaml on pi")
    assert "sgemm 2048x2048 float32, best of 5, 4 BLAS threads" in p.sources["peak_flops"]
    assert "RAPL" in p.sources["active_power"] and "sleep" in p.sources["idle_power"]
    for key in ("energy_per_flop", "energy_per_dram_byte", "grid_carbon_intensity"):
        assert getattr(p, key) == getattr(rpi4, key)
        assert p.sources[key].startswith("from base profile rpi4: ")
    efficiency = p.optional["decode_efficiency"]
    assert efficiency.value == 0.25 and efficiency.unit == "fraction"
    assert "2 ms per token" in efficiency.source and "abababababab" in efficiency.source
    assert p.optional["decode_threads"].value == 1 and p.optional["cores"].value == 4


def test_without_rapl_or_a_decode_workload_those_figures_are_left_out(tmp_path):
    measured = {**MEASURED, "idle": {"joules": None, "seconds": 0.0},
                "sgemm": {**MEASURED["sgemm"], "joules": None},
                "decode": {"reason": "no decode_workload"}}
    text, left_out = calibration.calibrated_profile(measured, MANIFEST, "x", "rpi5", "cmd", "h",
                                                    "d")
    (tmp_path / "x.yaml").write_text(text)
    p = load_profile(tmp_path / "x.yaml")
    assert p.sources["idle_power"].startswith("from base profile rpi5: ")
    assert "decode_efficiency" not in p.optional and "decode_threads" not in p.optional
    assert any("RAPL" in reason for reason in left_out)
    assert any("no decode_workload" in reason for reason in left_out)


def test_calibrate_measures_a_bundle_in_process(bundle, tmp_path):
    _, folder, _ = bundle
    manifest = verify_bundle(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    rapl_zone(tmp_path, 42)  # counters that do not move: no usable power
    measured = calibration.calibrate(str(folder), manifest, tokenizer, rapl_root=tmp_path, **SMALL)
    decode = measured["decode"]
    new_tokens = calibration.decode_workload(manifest)["new_tokens"]
    assert decode["steps"] == SMALL["runs"] * (new_tokens - 1)
    assert math.isclose(decode["efficiency"], decode["roofline_ms"] / decode["decode_ms"])
    assert measured["sgemm"]["threads"] == measured["cpus"] == calibration.usable_cpus()
    _, left_out = calibration.calibrated_profile(measured, manifest, "h", "cpu_xeon", "c", "h", "d")
    assert left_out == ["idle and active power: RAPL readings not usable as powers (idle 0 W, "
                        "active 0 W)"]
    older = {k: v for k, v in manifest.items() if k != "decode_workload"}
    measured = calibration.calibrate(str(folder), older, tokenizer, rapl_root=tmp_path / "no",
                                     **SMALL)
    assert "export it again" in measured["decode"]["reason"]


def test_a_calibrated_profile_predicts_the_device_it_measured(bundle, tmp_path):
    """Calibrated here and predicted for here at the workload's own context, the predicted
    decode step is the one run.py measured: both sides count the same workload against the
    same roofline."""
    _, folder, _ = bundle
    out = tmp_path / "here.yaml"
    done = run_py(folder, "--calibrate", out, "--calibrate-base", "cpu_xeon", "--bench", "2",
                  "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)["measured"]
    assert done.stderr == "" and out.is_file()
    here = load_profile(out)
    assert here.sources["peak_flops"].startswith("measured: python run.py")
    assert here.optional["decode_efficiency"].value == pytest.approx(
        measured["decode"]["efficiency"], rel=1e-6)
    if not runner.read_rapl():  # this machine's counters are not readable: powers inherited
        assert here.sources["active_power"].startswith("from base profile cpu_xeon: ")
    workload = verify_bundle(folder)["decode_workload"]
    options = ProfileOptions(runs=1, seq_len=workload["prompt_tokens"],
                             new_tokens=workload["new_tokens"], targets=(str(out), "rpi4"))
    mine, rpi4 = profile_path(folder, options)["predictions"]
    assert mine["efficiency_from"] == "calibrated on device" and rpi4["efficiency_from"] == "host"
    assert mine["latency_ms"] == pytest.approx(measured["decode"]["decode_ms"], rel=1e-5)
    text = invoke("profile", folder, "--runs", "1", "--seq-len", "8", "--new-tokens", "4",
                  "--target", out)
    assert text.exit_code == 0, text.output
    assert "calibrated on device" in text.output and "here:" in text.output  # the note


@pytest.mark.parametrize("args, words", [
    (["--calibrate", "{tmp}/p.yaml", "--calibrate-base", "cray1"],
     ["cray1", "not a shipped CPU profile", "rpi4"]),
    (["--calibrate", "{tmp}/p.yaml"], ["give --calibrate-base", "rpi4"]),
    (["--calibrate", "{tmp}/no/p.yaml", "--calibrate-base", "rpi4"], ["does not exist"]),
    (["--calibrate", "{tmp}/folder.yaml", "--calibrate-base", "rpi4"], ["is a folder"]),
    (["--calibrate", "/proc/p.yaml", "--calibrate-base", "rpi4"], ["cannot write"]),
    (["--calibrate", "{tmp}/p.txt", "--calibrate-base", "rpi4"], [".yaml"]),
    (["--calibrate", "{tmp}/p.yaml", "--calibrate-base", "rpi4", "--int8"], ["--int8"]),
    (["--calibrate", "{tmp}/p.yaml", "--calibrate-base", "rpi4", "--threads", "0"],
     ["--threads must be >= 1"]),
    (["--prompt", "hi", "--calibrate-base", "rpi4"], ["goes with --calibrate"]),
])
def test_bad_calibration_input_is_one_line_and_exit_2(bundle, tmp_path, args, words):
    _, folder, _ = bundle
    (tmp_path / "folder.yaml").mkdir()
    done = run_py(folder, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    for word in words:
        assert word in done.stderr, done.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_an_efficiency_measured_with_other_threads_is_noted(bundle, tmp_path):
    _, folder, _ = bundle
    text, _ = calibration.calibrated_profile(MEASURED, MANIFEST, "four", "rpi4", "c", "h", "d")
    (tmp_path / "four.yaml").write_text(text)
    options = dataclasses.replace(ProfileOptions(runs=1, seq_len=8, new_tokens=4, threads=2),
                                  targets=(str(tmp_path / "four.yaml"),))
    report = profile_path(folder, options)
    assert report["predictions"][0]["efficiency"] == 0.25
    assert any("four:" in note and "--threads 2" in note for note in report["notes"])
