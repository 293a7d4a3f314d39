"""qtf-edge profile: the prediction's arithmetic, energy labels, the RAPL-absent path, the
measured rows of a real bundle, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
from run_factory import export_dense_run

from cli_helpers import assert_one_line_error, invoke
from qtf_edge import runs
from qtf_edge.cost.profiles import load_profile
from qtf_edge.export.bundle import runner_module
from qtf_edge.profile.measure import TorchGenerator
from qtf_edge.profile.operators import group_by_part, kernel_times, module_part
from qtf_edge.profile.pipeline import ProfileOptions, per_threads, profile_bundle
from qtf_edge.profile.predict import host_energy, predict

FAST = ProfileOptions(runs=2, seq_len=8, new_tokens=4, targets=("rpi4", "edge_tpu"))


def profile(name, **figures):
    return dataclasses.replace(load_profile(name), **figures)


def test_prediction_arithmetic_on_a_hand_computed_example():
    workload = {"matmul": (1e9, 1e6), "weights": (1e6, 1e9)}
    host = profile("cpu_xeon", peak_flops=1e12, memory_bandwidth=1e10)
    target = profile("rpi4", peak_flops=1e11, memory_bandwidth=1e9, energy_per_flop=1e-12,
                     energy_per_dram_byte=1e-11, idle_power=2.0)
    # host roofline: matmul max(1e9/1e12, 1e6/1e10) = 1 ms, weights max(1e-6, 0.1) s =
    # 100 ms: 101 ms. Measured 202 ms: efficiency 0.5.
    # target roofline: matmul max(10, 1) ms = 10 ms, weights max(0.01, 1000) ms: 1010 ms;
    # predicted 1010 / 0.5 = 2020 ms.
    # energy: 1.001e9 FLOP x 1e-12 J + 1.001e9 B x 1e-11 J + 2 W x 2.02 s = 4.051011 J
    result = predict(workload, 202.0, host, target)
    assert result["label"] == "predicted" and result["bound"] == "memory"
    assert math.isclose(result["host_efficiency"], 0.5)
    assert math.isclose(result["target_roofline_ms"], 1010.0)
    assert math.isclose(result["latency_ms"], 2020.0)
    assert math.isclose(result["energy_uj"], 4.051011e6)
    assert math.isclose(result["co2_g"], 4.051011 / 3.6e6 * target.grid_carbon_intensity)
    with pytest.raises(ValueError, match="> 0 ms"):
        predict(workload, 0.0, host, target)


def test_thread_share_of_a_profile():
    xeon = load_profile("cpu_xeon")  # 40 cores
    assert math.isclose(per_threads(xeon, 4).peak_flops, xeon.peak_flops / 10)
    assert per_threads(xeon, 4).memory_bandwidth == xeon.memory_bandwidth
    assert per_threads(xeon, 64) == xeon
    no_cores = dataclasses.replace(xeon, optional={})
    assert per_threads(no_cores, 1) == no_cores


def test_host_energy_is_labelled_estimated_and_counts_the_cores_in_use():
    xeon = load_profile("cpu_xeon")
    one = host_energy(10.0, xeon, threads=1)
    power = xeon.idle_power + (xeon.active_power - xeon.idle_power) / 40
    assert one["label"] == "estimated" and math.isclose(one["power_w"], power)
    assert math.isclose(one["energy_uj"], power * 10e-3 * 1e6)
    assert math.isclose(host_energy(10.0, xeon, threads=40)["power_w"], xeon.active_power)
    assert set(one["sources"]) == {"idle_power", "active_power"}


# ---------------------------------------------------------------------------- a real bundle

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return export_dense_run(tmp_path_factory.mktemp("profile"), "rpi")


def test_every_artifact_is_measured_and_every_energy_labelled(bundle):
    source, folder, _ = bundle
    report = profile_bundle(folder, FAST)
    assert [r["artifact"] for r in report["measured"]] == ["torch", "onnx", "onnx_int8",
                                                            "tflite", "tflite_int8"]
    assert report["measured"][0]["runtime"] == "torch (eager)"
    for row in report["measured"]:
        assert row["runs"] == 2 and row["decode_ms_per_token"]["n"] == 2 * 3
        assert row["file_mb"] > 0 and row["peak_rss_mb"] > 0 and row["tokens_per_s"] > 0
        assert row["energy"]["label"] in ("measured", "estimated")
        if row["energy"]["label"] == "estimated":  # no RAPL here: said so, and why
            assert "RAPL" in row["energy"]["reason"] and row["energy"]["energy_uj"] > 0
    assert [p["profile"] for p in report["predictions"]] == ["rpi4", "edge_tpu"]
    assert all(p["label"] == "predicted" and p["latency_ms"] > 0 for p in report["predictions"])
    assert set(report["workload"]) == {"embedding", "quantum_encoder", "attention", "ffn",
                                       "head"}
    parts = report["operators"]["parts"]  # the decode graph's kernels, grouped by part
    assert {"embedding", "attention", "ffn", "head"} <= set(parts)
    assert math.isclose(sum(p["share"] for p in parts.values()), 1.0)
    assert parts["attention"]["kernels_per_step"] > 0 and parts["ffn"]["ms_per_step"] > 0
    text = invoke("profile", folder, "--runs", "1", "--seq-len", "8", "--new-tokens", "2",
                  "--target", "rpi5")
    assert text.exit_code == 0, text.output
    assert "estimated uJ/token" in text.output and "measured uJ/token" in text.output
    assert "PREDICTED" in text.output and "rpi5" in text.output


def test_without_its_source_run_a_bundle_is_measured_but_not_predicted(bundle, tmp_path):
    source, folder, _ = bundle
    moved = tmp_path / "elsewhere"
    shutil.move(source, moved)
    try:
        report = profile_bundle(folder, dataclasses.replace(FAST, runs=1))
    finally:
        shutil.move(moved, source)
    assert report["predictions"] == [] and "no predictions" in report["notes"][0]
    assert [r["artifact"] for r in report["measured"]][0] == "onnx"  # no torch row


def test_bad_input_is_one_line_and_exit_2(bundle, tmp_path):
    _, folder, _ = bundle
    for args, words in (((folder, "--runs", "0"), ["--runs"]),
                        ((folder, "--target", "cray1", "--seq-len", "8"), ["cray1"]),
                        ((folder, "--seq-len", "30", "--new-tokens", "8"), ["context"]),
                        ((tmp_path / "nowhere",), ["not found"]),
                        ((folder, "--out", tmp_path / "no" / "r.json"), ["--out", "not exist"]),
                        ((folder, "--out", tmp_path), ["--out", "cannot write"])):
        assert_one_line_error(invoke("profile", *args), *words)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "config.json").write_text("{}")
    assert_one_line_error(invoke("profile", copy), "config.json")
    assert manifest["target"] == "rpi"


def test_module_parts_and_the_profiler_trace():
    assert [module_part(m) for m in ("token_embedding", "blocks.3.ffn.up", "blocks.0.router",
                                     "blocks.1.ln_attention", "blocks.1", "ln_final", "model",
                                     None)] == [
        "embedding", "ffn", "quantum_encoder", "attention", "other", "head", "other", "other"]
    assert module_part("model", "MatMul") == "head"  # the tied head, x @ E.T
    trace = [{"cat": "Session", "name": "model_run", "dur": 999},
             {"cat": "Node", "name": "blocks.0.ffn.up/node_MatMul_1_kernel_time", "dur": 30,
              "args": {"op_name": "MatMul"}},
             {"cat": "Node", "name": "blocks.0.ffn.up/node_MatMul_1_fence_before", "dur": 0},
             {"cat": "Node", "name": "token_embedding/node_Gather_0_kernel_time", "dur": 10,
              "args": {"op_name": "Gather"}}]
    kernels = kernel_times(trace)
    assert kernels == [("blocks.0.ffn.up/node_MatMul_1", "MatMul", 30.0),
                       ("token_embedding/node_Gather_0", "Gather", 10.0)]
    grouped = group_by_part(kernels, steps=2)
    assert grouped == {"ffn": {"ms_per_step": 0.015, "share": 0.75, "kernels_per_step": 0.5},
                       "embedding": {"ms_per_step": 0.005, "share": 0.25,
                                     "kernels_per_step": 0.5}}


def test_the_torch_row_decodes_what_the_bundle_decodes(bundle):
    source, folder, _ = bundle
    timings = []
    eager = TorchGenerator(runs.load_run(source).model, threads=1)([5, 6, 7, 8], 6,
                                                                   timings=timings)
    assert eager == runner_module().generate(str(folder), [5, 6, 7, 8], 6, stop_token_ids=())
    assert len(timings) == 6 and all(t > 0 for t in timings)  # prefill, then 5 decode steps
