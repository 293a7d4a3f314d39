"""qtf-edge profile: the prediction's arithmetic (host or device-calibrated efficiency, per
step and per query), energy labels per token and per query, the RAPL-absent path, the
measured rows of a real bundle and of a run folder, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
from run_factory import export_dense_run

from cli_helpers import assert_one_line_error, invoke
from qtf_edge import runs
from qtf_edge.cost.profiles import Figure, load_profile
from qtf_edge.export.bundle import runner_module
from qtf_edge.profile.measure import TorchGenerator
from qtf_edge.profile.operators import group_by_part, kernel_times, module_part
from qtf_edge.profile.pipeline import (
    ProfileOptions,
    label_energy,
    per_threads,
    profile_path,
)
from qtf_edge.profile.predict import Query, host_energy, predict

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
    assert result["efficiency"] == result["host_efficiency"]
    assert result["efficiency_from"] == "host" and "query" not in result
    assert math.isclose(result["target_roofline_ms"], 1010.0)
    assert math.isclose(result["latency_ms"], 2020.0)
    assert math.isclose(result["energy_uj"], 4.051011e6)
    assert math.isclose(result["co2_g"], 4.051011 / 3.6e6 * target.grid_carbon_intensity)
    with pytest.raises(ValueError, match="> 0 ms"):
        predict(workload, 0.0, host, target)


def test_a_calibrated_target_brings_its_own_efficiency():
    workload = {"matmul": (1e9, 1e6), "weights": (1e6, 1e9)}
    host = profile("cpu_xeon", peak_flops=1e12, memory_bandwidth=1e10)
    rpi4 = load_profile("rpi4")
    target = profile("rpi4", peak_flops=1e11, memory_bandwidth=1e9, energy_per_flop=1e-12,
                     energy_per_dram_byte=1e-11, idle_power=2.0,
                     optional={**rpi4.optional, "decode_efficiency": Figure(
                         0.25, "fraction", "measured: run.py --calibrate")})
    # target roofline 1010 ms (as above) / its own efficiency 0.25 = 4040 ms; the host's
    # efficiency (0.5) is still reported but not used.
    # energy: 1.001e9 x 1e-12 + 1.001e9 x 1e-11 + 2 W x 4.04 s = 8.091011 J
    result = predict(workload, 202.0, host, target)
    assert result["efficiency_from"] == "calibrated on device"
    assert math.isclose(result["efficiency"], 0.25)
    assert math.isclose(result["host_efficiency"], 0.5)
    assert math.isclose(result["latency_ms"], 4040.0)
    assert math.isclose(result["energy_uj"], 8.091011e6)


def test_a_query_is_the_prefill_plus_its_decode_steps():
    workload = {"matmul": (1e9, 1e6), "weights": (1e6, 1e9)}
    host = profile("cpu_xeon", peak_flops=1e12, memory_bandwidth=1e10)
    target = profile("rpi4", peak_flops=1e11, memory_bandwidth=1e9, energy_per_flop=1e-12,
                     energy_per_dram_byte=1e-11, idle_power=2.0)
    # prefill: host roofline max(1e10/1e12, 1e8/1e10) = 10 ms, measured 40 ms: efficiency
    # 0.25; target roofline max(100, 100) ms = 100 ms -> 400 ms; energy 1e10 x 1e-12 +
    # 1e8 x 1e-11 + 2 W x 0.4 s = 0.811 J. Decode step as above: 2020 ms, 4.051011 J.
    # Query: 400 + 3 x 2020 = 6460 ms; 0.811 + 3 x 4.051011 = 12.964033 J.
    query = Query(decode_steps=3, prefill_workload={"prefill": (1e10, 1e8)}, prefill_ms=40.0)
    result = predict(workload, 202.0, host, target, query)["query"]
    assert math.isclose(result["prefill_ms"], 400.0)
    assert math.isclose(result["latency_ms"], 6460.0)
    assert math.isclose(result["energy_uj"], 12.964033e6)
    assert math.isclose(result["co2_g"], 12.964033 / 3.6e6 * target.grid_carbon_intensity)
    decode_only = predict(workload, 202.0, host, target, Query(decode_steps=3))["query"]
    assert math.isclose(decode_only["latency_ms"], 6060.0) and decode_only["prefill_ms"] is None
    assert "decode steps only" in decode_only["covers"]


def test_measured_rows_energy_per_query():
    xeon = load_profile("cpu_xeon")
    options = ProfileOptions(new_tokens=4, threads=40)  # all 40 cores: active power
    timed = {"prefill_ms": {"median": 4.0}, "decode_ms_per_token": {"median": 2.0}, "runs": 2}
    estimated = {**timed, "energy": {"measured": False, "reason": "no RAPL here"}}
    label_energy(estimated, xeon, options)
    # a query: prefill 4 ms + (4 - 1) decode steps x 2 ms = 10 ms at 270 W = 2.7 J
    energy = estimated["energy"]
    assert energy["label"] == "estimated" and energy["reason"] == "no RAPL here"
    assert math.isclose(energy["energy_uj"], 270 * 2e-3 * 1e6)
    assert math.isclose(energy["per_query"]["ms"], 10.0)
    assert math.isclose(energy["per_query"]["energy_uj"], 2.7e6)
    assert math.isclose(energy["per_query"]["co2_g"], 2.7 / 3.6e6 * 480)
    # RAPL: 3 J over 2 runs of 4 tokens: 1.5 J a query, 0.375 J a token
    measured = {**timed, "energy": {"measured": True, "joules": 3.0, "joules_per_token": 0.375,
                                    "source": "RAPL"}}
    label_energy(measured, xeon, options)
    energy = measured["energy"]
    assert energy["label"] == "measured" and math.isclose(energy["energy_uj"], 0.375e6)
    assert math.isclose(energy["per_query"]["energy_uj"], 1.5e6)
    assert math.isclose(energy["per_query"]["co2_g"], 1.5 / 3.6e6 * 480)


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
    report = profile_path(folder, FAST)
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
    for row in report["measured"]:  # per query: the prefill and 3 decode steps, labelled
        query = row["energy"]["per_query"]
        assert query["energy_uj"] > row["energy"]["energy_uj"] and query["co2_g"] > 0
    assert report["query"]["decode_steps"] == FAST.new_tokens - 1
    for p in report["predictions"]:  # the prefill's prediction makes up the difference
        assert p["query"]["latency_ms"] > p["query"]["decode_steps"] * p["latency_ms"]
        assert p["query"]["prefill_ms"] > 0 and p["efficiency_from"] == "host"
    text = invoke("profile", folder, "--runs", "1", "--seq-len", "8", "--new-tokens", "2",
                  "--target", "rpi5")
    assert text.exit_code == 0, text.output
    for column in ("estimated uJ/token", "measured uJ/token", "estimated uJ/query",
                   "estimated gCO2/query", "measured gCO2/query", "uJ/query", "gCO2/query"):
        assert column in text.output
    assert "PREDICTED" in text.output and "rpi5" in text.output


def test_a_run_folder_is_measured_in_eager_pytorch_and_predicted(bundle):
    source, _, _ = bundle
    report = profile_path(source, FAST)
    assert report["bundle"] is None and report["run"] == str(source)
    [row] = report["measured"]
    assert row["artifact"] == "torch" and row["energy"]["label"] in ("measured", "estimated")
    assert row["energy"]["per_query"]["energy_uj"] > 0
    assert report["efficiency_basis"] == "torch eager"
    assert "torch eager, not from an exported graph" in report["notes"][0]
    operators = report["operators"]  # timed by forward hooks, per part
    assert operators["graph"] == "torch eager" and operators["steps"] == FAST.new_tokens
    assert {"embedding", "attention", "ffn", "head"} <= set(operators["parts"])  # dense
    assert "quantum_encoder" not in operators["parts"]
    assert [p["profile"] for p in report["predictions"]] == ["rpi4", "edge_tpu"]
    # the host efficiency is the torch row's, on the model as it is (no lowering)
    host = per_threads(load_profile(FAST.host_profile), FAST.threads)
    prediction = report["predictions"][0]
    workload = {part: (w["flops"], w["bytes"]) for part, w in report["workload"].items()}
    assert math.isclose(prediction["host_efficiency"], predict(
        workload, row["decode_ms_per_token"]["median"], host, "rpi4")["host_efficiency"])
    text = invoke("profile", source, "--runs", "1", "--seq-len", "8", "--new-tokens", "2")
    assert text.exit_code == 0, text.output
    assert "run folder" in text.output and "PREDICTED" in text.output


def test_without_its_source_run_a_bundle_is_measured_but_not_predicted(bundle, tmp_path):
    source, folder, _ = bundle
    moved = tmp_path / "elsewhere"
    shutil.move(source, moved)
    try:
        report = profile_path(folder, dataclasses.replace(FAST, runs=1))
    finally:
        shutil.move(moved, source)
    assert report["predictions"] == [] and "no predictions" in report["notes"][0]
    assert [r["artifact"] for r in report["measured"]][0] == "onnx"  # no torch row


def test_bad_input_is_one_line_and_exit_2(bundle, tmp_path):
    _, folder, _ = bundle
    for args, words in (((folder, "--runs", "0"), ["--runs"]),
                        ((folder, "--target", "cray1", "--seq-len", "8"), ["cray1"]),
                        ((folder, "--seq-len", "30", "--new-tokens", "8"), ["context"]),
                        ((tmp_path / "nowhere",), ["not found", "run folder"]),
                        ((tmp_path,), [str(tmp_path), "neither", "manifest.json",
                                       "config.json + model.safetensors"]),
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
