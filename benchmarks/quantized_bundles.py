"""The cpu bundle's float and int8 graphs of compressed runs, side by side.

For a weight-only quantised run (compress --bits), the float graphs run its MatMulNBits
layers on float activations (the exact kernel its torch rounding is checked against) and
the int8 graphs run them at accuracy_level 4 (activations rounded to int8 per call) plus
dynamic int8 for any float MatMul left. Per run and graph: the validation perplexity per
token and top-1 agreement with torch from the bundle's manifest (its --eval-tokens of the
shipped validation excerpt), and one-thread ONNX Runtime prefill/decode medians
(benchmarks/export.py's `measure`).

    python benchmarks/quantized_bundles.py runs/cpu/keep9/search-1_4 runs/cpu/keep9/search-1_8 \
        [--repeats 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from export import measure  # benchmarks/export.py, this script's neighbour
from qtf_edge.host import describe_host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (compress outputs)")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(str(run), run, Path(tmp), args) for run in args.runs]
    print(f"\nmachine: {describe_host(1)}; onnxruntime CPU, 1 thread; medians of "
          f"{args.repeats}; decode: one token after the prompt's {rows[0]['prompt'] - 1}\n")
    print("| run | graphs | MB | ppl/token | vs float | top-1 vs torch | decode ms | vs float |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = r["float"]
        for kind in ("float", "int8"):
            g = r[kind]
            print(f"| {r['model']} | {kind} | {g['bytes'] / 1e6:.3f} | {g['ppl_token']:.2f} "
                  f"| {g['ppl_token'] / base['ppl_token']:.4f}x | {g['top1_agreement']:.4f} "
                  f"| {g['decode_ms']:.3f} | {g['decode_ms'] / base['decode_ms']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_host(1), "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
