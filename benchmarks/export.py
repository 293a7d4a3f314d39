"""Export dense and QTF models for the cpu target and time their bundles, side by side.

For each model: `qtf-edge export`'s pipeline (deploy form, TT lowering per layer, ONNX
prefill + decode graphs, dynamic int8, validation), then one-thread latencies of
    prefill   the 128-token prompt (what re-running the whole sequence costs; the context
              length when it is shorter)
    decode    one token after 127 cached ones (what each generated token costs)
under onnxruntime (float and int8) and torch eager, in the same process, and the
artifact sizes and validation numbers from the bundle's manifest.

Trained runs give meaningful validation numbers; `--widths` adds untrained models built
from the presets at other widths (d_model 512 is the `large` preset), for latency only.

    python benchmarks/export.py --dense runs/cbench/dense --qtf runs/qtf-small --widths 512
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from qtf_edge.config import ModelConfig
from qtf_edge.export.pipeline import ExportOptions, export_run
from qtf_edge.host import describe_host
from qtf_edge.model import QTensorFormer
from qtf_edge.presets import PRESETS, preset
from qtf_edge.profile.onnx_timing import graph_latency, median_ms
from qtf_edge.runs import load_run, save_run

PROMPT = 128
PRESET_BY_WIDTH = {model["d_model"]: name for name, (model, _) in PRESETS.items()}


@torch.inference_mode()
def torch_latency(model, repeats: int, prompt: int) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (1, prompt))
    cache = model.new_cache()
    model(ids[:, :-1], cache)

    def decode_step():
        model(ids[:, -1:], copy.deepcopy(cache))  # the step extends its cache in place

    copying = median_ms(lambda: copy.deepcopy(cache), repeats)
    return {"prefill_ms": median_ms(lambda: model(ids), repeats),
            "decode_ms": median_ms(decode_step, repeats) - copying}


def untrained_run(folder: Path, width: int, arch: str, tokenizer: Path) -> Path:
    fields, _ = preset(PRESET_BY_WIDTH[width])
    vocab = json.loads(tokenizer.read_text())["model"]["vocab"]
    config = ModelConfig(**fields, vocab_size=len(vocab))
    torch.manual_seed(0)
    model = QTensorFormer(config.dense_baseline() if arch == "dense" else config).eval()
    return save_run(folder, model, tokenizer.read_bytes(), command="benchmarks/export.py")


def measure(name: str, run: Path, work: Path, args) -> dict:
    bundle = work / name.replace(" ", "-")
    start = time.perf_counter()
    report = export_run(run, bundle, ExportOptions(target="cpu", distill=True,
                                                   eval_tokens=args.eval_tokens))
    export_s = time.perf_counter() - start
    manifest = json.loads((bundle / "manifest.json").read_text())
    sizes = {f["path"]: f["bytes"] for f in manifest["files"]}
    validation = manifest["validation"]
    lowered = next(p for p in report["passes"]
                   if p["pass"] == "lower_tt")["details"]["layers"]["decode"]
    model = load_run(run).model.eval()
    prompt = min(PROMPT, model.config.context_length)  # smaller presets: their context
    row = {"model": name, "params": sum(p.numel() for p in model.parameters()),
           "export_s": export_s,
           "dense_layers": sum(r["chosen"] == "dense" for r in lowered), "tt_layers": len(lowered),
           "prompt": prompt, "torch": torch_latency(model, args.repeats, prompt)}
    for kind, suffix in (("float", ""), ("int8", "_int8")):
        row[kind] = {"bytes": sizes[f"prefill{suffix}.onnx"],
                     "ppl_token": validation[kind]["prefill"]["perplexity"],
                     "top1_agreement": validation[kind]["prefill"]["top1_agreement"],
                     "max_abs_diff": validation[kind]["prefill"]["max_abs_diff"],
                     **graph_latency(bundle, suffix, args.repeats, prompt)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dense", type=Path, required=True, help="trained dense run folder")
    parser.add_argument("--qtf", type=Path, required=True, help="trained QTF run folder")
    parser.add_argument("--widths", type=int, nargs="*", default=[512],
                        choices=sorted(PRESET_BY_WIDTH), help="untrained widths to add")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        width = load_run(args.dense).config.d_model
        for arch, run in (("dense", args.dense), ("qtf", args.qtf)):
            print(f"exporting {arch} d={width}", flush=True)
            rows.append(measure(f"{arch} d={width}", run, work, args))
        tokenizer = args.dense / "tokenizer.json"
        for extra in args.widths:
            for arch in ("dense", "qtf"):
                name = f"{arch} d={extra} (untrained)"
                print(f"exporting {name}", flush=True)
                run = untrained_run(work / f"run-{arch}-{extra}", extra, arch, tokenizer)
                rows.append(measure(name, run, work, args))

    print(f"\nmachine: {describe_host(1)}; onnxruntime CPU, 1 thread; prompt {PROMPT} tokens (or the context, if shorter); "
          f"medians of {args.repeats}\n")
    print("| model | params | onnx MB | int8 MB | ppl/token float | int8 | top-1 float | "
          "prefill ms torch | onnx | int8 | decode ms torch | onnx | int8 | "
          "prefill/decode onnx |")
    print("|---|" + "---|" * 13)
    for r in rows:
        f, q, t = r["float"], r["int8"], r["torch"]
        print(f"| {r['model']} | {r['params']:,} | {f['bytes'] / 1e6:.2f} | {q['bytes'] / 1e6:.2f} "
              f"| {f['ppl_token']:.1f} | {q['ppl_token']:.1f} | {f['top1_agreement']:.4f} "
              f"| {t['prefill_ms']:.2f} | {f['prefill_ms']:.2f} | {q['prefill_ms']:.2f} "
              f"| {t['decode_ms']:.3f} | {f['decode_ms']:.3f} | {q['decode_ms']:.3f} "
              f"| {f['prefill_ms'] / f['decode_ms']:.1f}x |")
    print("\nQTF / dense, ONNX decode ms per token (float):")
    by_name = {r["model"]: r for r in rows}
    for r in rows:
        if r["model"].startswith("qtf"):
            dense = by_name[r["model"].replace("qtf", "dense", 1)]
            print(f"  {r['model']}: {r['float']['decode_ms'] / dense['float']['decode_ms']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_host(1), "args": {
            k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
