"""Profile dense and QTF bundles side by side: measured here, estimated and predicted elsewhere.

For each bundle (`--bundle NAME=PATH`, made by `qtf-edge export ... --target rpi`):
    measured    `qtf-edge profile`'s host rows for the float ONNX graphs: decode ms per
                token (median, p90) and tokens/s, through the bundle's own run.py
    estimated   energy per query (a prefill of --seq-len tokens) on each profile, from the
                cost model's FLOPs and bytes (cost.model_energy: roofline + energy rates)
    predicted   decode ms per token on rpi4: its roofline over this machine's measured
                efficiency on the same graph (profile/predict.py)
    operators   onnxruntime's profiler on the decode graph, kernel time grouped by part
    roofline    this machine's achieved fraction of its memory bandwidth while decoding:
                weight bytes read per token / measured decode time, against the bandwidth
                a copy loop measures in the same run (run.py --calibrate's: numpy, 256 MiB, best of 5)
Ratios are against the first bundle (the dense baseline).

    python benchmarks/profile_bundles.py --bundle dense=bundles/dense-rpi --bundle qtf=bundles/qtf-rpi
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qtf_edge.cost.model_energy import estimate_model_energy
from qtf_edge.host import describe_host
from qtf_edge.export.bundle import calibration_module
from qtf_edge.profile.pipeline import ProfileOptions, open_subject, profile_subject

ENERGY_PROFILES = ("cpu_xeon", "rpi4", "edge_tpu", "edge_mobile")
COPY_MIB = 256


def weight_bytes_per_token(report: dict) -> float:
    """Bytes the decode step reads, as the cost model counts them (weights, KV cache)."""
    return sum(part["bytes"] for part in report["workload"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    # the copy loop run.py --calibrate measures a device's bandwidth with
    bandwidth = calibration_module().copy_bandwidth(COPY_MIB)
    options = ProfileOptions(runs=args.runs, seq_len=args.seq_len, new_tokens=args.new_tokens,
                             targets=("rpi4",))
    rows = []
    for spec in args.bundle:
        name, _, path = spec.partition("=")
        subject = open_subject(path)
        # the source run as trained: profiling then sets the export's lowerings on it
        energy = {p: estimate_model_energy(subject.run.model, p,
                                           seq_len=args.seq_len).per_query.energy_uj
                  for p in ENERGY_PROFILES}
        report = profile_subject(subject, options)
        onnx = next(r for r in report["measured"] if r["artifact"] == "onnx")
        decode_ms = onnx["decode_ms_per_token"]["median"]
        step_bytes = weight_bytes_per_token(report)
        rows.append({"name": name, "bundle": path, "decode_ms": decode_ms,
                     "decode_p90_ms": onnx["decode_ms_per_token"]["p90"],
                     "tokens_per_s": 1e3 / decode_ms,
                     "estimated_energy_uj_per_query": energy,
                     "predicted_rpi4_ms": report["predictions"][0]["latency_ms"],
                     "decode_bytes": step_bytes,
                     "bandwidth_fraction": step_bytes / (decode_ms / 1e3) / bandwidth,
                     "operators": report["operators"]})

    base = rows[0]
    print(f"host: {describe_host(1)}; onnxruntime CPU; prompt {args.seq_len} "
          f"tokens, {args.new_tokens} new, {args.runs} runs; copy-loop bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s (measured)\n")
    header = ("| model | decode ms (measured, median / p90) | tokens/s (measured) | x dense | "
              + " | ".join(f"uJ/query {p} (estimated)" for p in ENERGY_PROFILES)
              + " | rpi4 decode ms (predicted) | decode bytes/token | "
                "bandwidth roofline achieved (measured) |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        print(f"| {r['name']} | {r['decode_ms']:.3f} / {r['decode_p90_ms']:.3f} | "
              f"{r['tokens_per_s']:.0f} | {r['decode_ms'] / base['decode_ms']:.2f} | "
              + " | ".join(f"{r['estimated_energy_uj_per_query'][p]:.4g}"
                           for p in ENERGY_PROFILES)
              + f" | {r['predicted_rpi4_ms']:.3f} | {r['decode_bytes'] / 1e6:.2f} MB | "
                f"{r['bandwidth_fraction']:.1%} |")
    parts = sorted({part for r in rows for part in r["operators"]["parts"]})
    print("\nWhere a decode step goes (onnxruntime profiler on decode.onnx; share of kernel "
          "time, kernels per step):\n")
    print("| model | kernels per step | " + " | ".join(parts) + " |")
    print("|---|---|" + "---|" * len(parts))
    for r in rows:
        found = r["operators"]["parts"]
        kernels = sum(p["kernels_per_step"] for p in found.values())
        print(f"| {r['name']} | {kernels:.0f} | " + " | ".join(
            f"{found[p]['share']:.0%} ({found[p]['kernels_per_step']:.0f})" if p in found
            else "-" for p in parts) + " |")
    print("\nTarget: decode at >= 30% of the host's bandwidth roofline: "
          + ", ".join(f"{r['name']} {'met' if r['bandwidth_fraction'] >= 0.3 else 'not met'}"
                      for r in rows))
    if args.json:
        args.json.write_text(json.dumps({"host": describe_host(1), "copy_bandwidth": bandwidth,
                                         "options": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
