"""Compress a trained dense `small` model to 1/2, 1/4 and 1/8 of its parameters.

For each ratio: uniform ranks against the greedy allocator, each without and with
healing, through `qtf_edge.compress.run.compress_run` (what `qtf-edge compress` runs,
embeddings included); validation word perplexity and the estimated rpi4 latency. Beside
them, the honest alternative: a dense model trained from scratch at the same parameter
count (a smaller d_model, same depth, data, steps and seed).

Training happens first, for whatever is missing in --train-dir (the dense model and the
smaller baselines); run that part on a GPU with --train-only, then the rest on a CPU:

    python benchmarks/compress.py --train-dir runs/compress-bench --device cuda --train-only
    python benchmarks/compress.py --train-dir runs/compress-bench [--heal-steps 200 1000]
        [--ratios 2 4 8] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from qtf_edge.compress.run import CompressOptions, compress_run
from qtf_edge.config import DENSE_SWITCHES, ModelConfig
from qtf_edge.cost.counts import count_params
from qtf_edge.data import load_tokenizer
from qtf_edge.derived import perplexity, validation_lines
from qtf_edge.host import describe_host
from qtf_edge.model import QTensorFormer
from qtf_edge.presets import preset
from qtf_edge.runs import load_run
from qtf_edge.train import train_run
from qtf_edge.train.budget import measure

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2"
RATIOS = (2, 4, 8)
PROFILE = "rpi4"
# (row label, --method, --sensitivity): the default allocator, its unweighted form, and
# the uniform baseline.
ALLOCATORS = (("uniform", "uniform", False), ("greedy", "greedy", True),
              ("greedy, plain energy", "greedy", False))


def baseline_width(target_params: int, model_fields: dict, vocab: int) -> int:
    """The d_model (a multiple of the head count, d_ff = 4 d) whose dense model has the
    parameter count closest to target_params."""
    heads = model_fields["n_heads"]

    def params(d: int) -> int:
        fields = {**model_fields, "d_model": d, "d_ff": 4 * d, "vocab_size": vocab,
                  **DENSE_SWITCHES}
        return count_params(QTensorFormer(ModelConfig(**fields)))
    return min(range(heads, model_fields["d_model"], heads),
               key=lambda d: abs(params(d) - target_params))


def train_missing(args, data: Path, valid: Path) -> dict[str, Path]:
    """{name: run folder} of the dense model and one baseline per ratio."""
    model_fields, train_fields = preset("small")
    vocab = train_fields["vocab_size"]
    runs = {"dense": args.train_dir / "dense"}
    full = count_params(QTensorFormer(ModelConfig(**model_fields, vocab_size=vocab).dense_baseline()))
    widths = {}
    for ratio in RATIOS:
        width = baseline_width(full // ratio, model_fields, vocab)
        widths[ratio] = width
        runs[f"scratch-1/{ratio}"] = args.train_dir / f"dense-d{width}"
    for name, folder in runs.items():
        if (folder / "model.safetensors").is_file():
            continue
        config_file = None
        if name != "dense":
            d = int(folder.name.removeprefix("dense-d"))
            config_file = args.train_dir / f"{folder.name}.yaml"
            config_file.write_text(yaml.safe_dump({"model": {"d_model": d, "d_ff": 4 * d}}))
        print(f"training {name} into {folder}", flush=True)
        train_run(folder, preset_name="small", arch="dense", data=data, valid=valid,
                  config_file=config_file, quiet=True, command="benchmarks/compress.py",
                  train_overrides={"steps": args.steps, "device": args.device, "seed": 0})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-dir", type=Path, default=REPO / "runs" / "compress-bench")
    parser.add_argument("--data-dir", type=Path, default=WIKITEXT)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--heal-steps", type=int, nargs="+", default=[200],
                        help="healing lengths to measure (besides none)")
    parser.add_argument("--ratios", type=int, nargs="+", default=list(RATIOS),
                        help="compression ratios (1/N of the parameters)")
    parser.add_argument("--eval-tokens", type=int, default=65536)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data, valid = args.data_dir / "train.txt", args.data_dir / "valid.txt"
    if not data.is_file():
        raise SystemExit(f"error: --data-dir {args.data_dir}: no train.txt (WikiText-2 expected)")
    runs = train_missing(args, data, valid)
    if args.train_only:
        return

    lines = validation_lines(valid)
    source = load_run(runs["dense"])
    tokenizer = load_tokenizer(source.tokenizer_path)

    def figures(model) -> dict:
        return {"params": count_params(model),
                "latency_ms": measure(model, PROFILE, model.config.context_length)["latency_ms"],
                "ppl_word": perplexity(model, tokenizer, lines,
                                       max_tokens=args.eval_tokens)["per_word"]}

    rows = [{"model": "dense (input)", **figures(source.model)}]
    with tempfile.TemporaryDirectory() as tmp:
        for ratio in args.ratios:
            for label, method, sensitivity in ALLOCATORS:
                for heal in (0, *args.heal_steps):
                    name = f"1/{ratio} {label}" + (f" + heal {heal}" if heal else "")
                    print(f"compressing: {name}", flush=True)
                    options = CompressOptions(
                        budget=f"params={1 / ratio!r}x", target=PROFILE, embeddings=True,
                        method=method, sensitivity=sensitivity, heal_steps=heal,
                        calib=str(data), data=str(valid), eval_tokens=args.eval_tokens,
                        device=args.device)
                    folder = Path(tmp) / name.replace("/", "_").replace(" ", "-")
                    report = compress_run(runs["dense"], folder, options)
                    ppl = report["perplexity"]["healed" if heal else "truncated"]["per_word"]
                    rows.append({"model": name, "params": report["after"]["params"],
                                 "latency_ms": report["after"]["latency_ms"], "ppl_word": ppl})
            scratch = load_run(runs[f"scratch-1/{ratio}"])
            rows.append({"model": f"1/{ratio} dense from scratch, d={scratch.config.d_model}",
                         **figures(scratch.model)})

    dense_ppl = rows[0]["ppl_word"]
    print(f"\nmachine: {describe_host(1)}; input {runs['dense']}; validation: first "
          f"{args.eval_tokens:,} tokens of {valid}; latency estimated on {PROFILE}\n")
    print("| model | params | ppl/word | vs dense | est. rpi4 latency ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['ppl_word']:.1f} | "
              f"{r['ppl_word'] / dense_ppl:.2f}x | {r['latency_ms']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_host(1), "args": {
            k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
