"""Compress a trained dense `small` model to 1/2, 1/4 and 1/8 of its parameters.

For each ratio, rows through `qtf_edge.compress.run.compress_run` (what `qtf-edge compress`
runs, embeddings included), scored on validation word perplexity with the estimated rpi4
latency:
- plain TT-SVD of the weights into balanced TT cores (the allocator of issue 5, for the
  record), plain SVD into low-rank splits, and activation-aware (whitened) low-rank
  truncation, the default, each before healing;
- the default healed by distillation from the uncompressed model (--heal-steps), and, for
  comparison, healed by next-token fine-tuning alone (distill alpha 0) for as long;
- the honest alternative: a dense model trained from scratch at the same parameter count
  (a smaller d_model, same depth, data, steps and seed).

Training happens first, for whatever is missing in --train-dir (the dense model and the
smaller baselines); run that part on a GPU with --train-only, then the rest:

    python benchmarks/compress_params.py --train-dir runs/compress-bench --device cuda --train-only
    python benchmarks/compress_params.py --train-dir runs/compress-bench [--heal-steps 1000]
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
# (row label, --method, --layout) before healing: issue 5's plain TT-SVD, plain low-rank
# SVD and the default, whitened low-rank; every one with the greedy, sensitivity-weighted
# allocator.
TRUNCATIONS = (("plain TT-SVD, balanced TT", "plain", "balanced"),
               ("plain SVD, low-rank", "plain", "low_rank"),
               ("whitened, low-rank", "whitened", "low_rank"))
# (row label, distill alpha) of the healed default.
HEALING = (("distilled", CompressOptions.distill_alpha), ("next-token only", 0.0))


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
    """{name: run folder} of the dense model and one baseline per --ratios."""
    model_fields, train_fields = preset("small")
    vocab = train_fields["vocab_size"]
    runs = {"dense": args.train_dir / "dense"}
    full = count_params(QTensorFormer(ModelConfig(**model_fields, vocab_size=vocab).dense_baseline()))
    for ratio in args.ratios:
        width = baseline_width(full // ratio, model_fields, vocab)
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
                  config_file=config_file, quiet=True, command="benchmarks/compress_params.py",
                  train_overrides={"steps": args.steps, "device": args.device, "seed": 0})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-dir", type=Path, default=REPO / "runs" / "compress-bench")
    parser.add_argument("--data-dir", type=Path, default=WIKITEXT)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--heal-steps", type=int, nargs="+", default=[1000],
                        help="healing lengths to measure (besides none)")
    parser.add_argument("--ratios", type=int, nargs="+", default=list(RATIOS),
                        help="compression ratios (1/N of the parameters)")
    parser.add_argument("--eval-tokens", type=int, default=0,
                        help="validation tokens to score (0: the whole split)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data, valid = args.data_dir / "train.txt", args.data_dir / "valid.txt"
    if not data.is_file():
        raise SystemExit(f"error: --data-dir {args.data_dir}: no train.txt (WikiText-2 expected)")
    eval_tokens = args.eval_tokens or None
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
                                       max_tokens=eval_tokens)["per_word"]}

    rows = [{"model": "dense (input)", **figures(source.model)}]

    def compress(name: str, ratio: int, out: Path, **options) -> None:
        print(f"compressing: {name}", flush=True)
        folder = out / name.replace("/", "_").replace(" ", "-").replace(",", "")
        report = compress_run(runs["dense"], folder, CompressOptions(
            budget=f"params={1 / ratio!r}x", target=PROFILE, embeddings=True, calib=str(data),
            data=str(valid), eval_tokens=eval_tokens, device=args.device, **options))
        ppl = report["perplexity"].get("healed", report["perplexity"]["truncated"])
        kl = report["kl_to_source"].get("healed", report["kl_to_source"]["truncated"])
        rows.append({"model": name, "params": report["after"]["params"],
                     "latency_ms": report["after"]["latency_ms"], "ppl_word": ppl["per_word"],
                     "kl_to_source": kl})
        print(f"  ppl/word {ppl['per_word']:.1f}, KL {kl:.3f}, {report['elapsed_s']:.0f} s",
              flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for ratio in args.ratios:
            for label, method, layout in TRUNCATIONS:
                compress(f"1/{ratio} {label}", ratio, Path(tmp), method=method, layout=layout)
            for heal in args.heal_steps:
                for label, alpha in HEALING:
                    compress(f"1/{ratio} whitened, low-rank + heal {heal} ({label})", ratio,
                             Path(tmp), heal_steps=heal, distill_alpha=alpha)
            scratch = load_run(runs[f"scratch-1/{ratio}"])
            rows.append({"model": f"1/{ratio} dense from scratch, d={scratch.config.d_model}",
                         **figures(scratch.model)})

    dense_ppl = rows[0]["ppl_word"]
    scored = f"first {eval_tokens:,} tokens" if eval_tokens else "every token"
    print(f"\nmachine: {describe_host(1)}; input {runs['dense']}; validation: {scored} of "
          f"{valid}; latency estimated on {PROFILE}\n")
    print("| model | params | ppl/word | vs dense | KL to dense (nats/token) | "
          "est. rpi4 latency ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        kl = f"{r['kl_to_source']:.3f}" if "kl_to_source" in r else "-"
        print(f"| {r['model']} | {r['params']:,} | {r['ppl_word']:.1f} | "
              f"{r['ppl_word'] / dense_ppl:.2f}x | {kl} | {r['latency_ms']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_host(1), "args": {
            k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
