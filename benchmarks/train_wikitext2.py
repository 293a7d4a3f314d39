"""Train a QTF and its dense baseline on WikiText-2 with the same tokenizer, steps and seed.

Both runs go through `qtf_edge.train.train_run` (what `qtf-edge train` runs) and are
then evaluated on the whole validation split with `qtf_edge.evaluate.evaluate_text`.
The step count is the same for both: the preset's, or fewer where --time-budget-s says so
(a short probe of the slower QTF step sets it; the table states the steps used).

    python benchmarks/train_wikitext2.py [--preset small] [--data-dir ../shared/data/wikitext-2]
        [--steps N] [--time-budget-s S] [--device auto] [--out DIR] [--json PATH]
        [--qtf-set KEY=VALUE ...] [--train-set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from qtf_edge.data import read_corpus
from qtf_edge.data.tokenizer import load_tokenizer, tokenizer_sha256
from qtf_edge.evaluate import evaluate_text
from qtf_edge.host import cpu_model
from qtf_edge.presets import preset
from qtf_edge.runs import load_run, read_metrics
from qtf_edge.train import train_run

REPO = Path(__file__).resolve().parents[1]
PROBE_STEPS = 30


def device_name(device: str) -> str:
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_model()


def parse_overrides(pairs: list[str], flag: str = "--qtf-set") -> dict:
    """KEY=VALUE config overrides (values parsed as JSON, else text)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: {flag} {pair!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def train(out: Path, arch: str, args, steps: int) -> float:
    start = time.perf_counter()
    train_run(out, preset_name=args.preset, arch=arch, data=args.data_dir / "train.txt",
              valid=args.data_dir / "valid.txt", overwrite=True, quiet=True,
              model_overrides=parse_overrides(args.qtf_set) if arch == "qtf" else None,
              train_overrides={**parse_overrides(args.train_set, "--train-set"), "steps": steps,
                               "device": args.device, "seed": args.seed},
              command=f"benchmarks/train_wikitext2.py ({arch})")
    return time.perf_counter() - start


def choose_steps(args) -> int:
    """The preset's steps, capped so the slower (QTF) run fits the time budget."""
    steps = args.steps or preset(args.preset)[1]["steps"]
    if not args.time_budget_s:
        return steps
    seconds = train(args.out / "probe", "qtf", args, PROBE_STEPS)  # tokenizer + compile included
    per_step = seconds / PROBE_STEPS
    return max(PROBE_STEPS, min(steps, int(args.time_budget_s / per_step)))


def measure(run_dir: Path, seconds: float, valid_lines: list[str], device: str) -> dict:
    run = load_run(run_dir, device="cpu")
    tokenizer = load_tokenizer(run.tokenizer_path)
    result = evaluate_text(run.model, tokenizer, valid_lines, batch_size=32,
                           device="cuda" if device != "cpu" and torch.cuda.is_available()
                           else "cpu")
    records, _ = read_metrics(run_dir)
    throughput = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
    return {"params": result.params, **result.perplexity.to_dict(),
            "routed_fraction": result.routed_fraction,
            "train_tokens_per_s": sum(throughput) / len(throughput) if throughput else None,
            "train_seconds": seconds, "tokenizer_sha256": tokenizer_sha256(run.tokenizer_path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared/data/wikitext-2")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="cap the steps so one QTF run takes about this long")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--qtf-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a ModelConfig field of the QTF run (repeatable)")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a TrainConfig field of both runs, e.g. "
                             "learning_rate=4e-3 (repeatable)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-wikitext2")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if not (args.data_dir / "train.txt").is_file():
        raise SystemExit(f"error: --data-dir {args.data_dir}: no train.txt (WikiText-2 expected)")

    steps = choose_steps(args)
    valid_lines = read_corpus(args.data_dir / "valid.txt")
    rows = {}
    for arch in ("qtf", "dense"):
        seconds = train(args.out / arch, arch, args, steps)
        rows[arch] = measure(args.out / arch, seconds, valid_lines, args.device)
    if rows["qtf"]["tokenizer_sha256"] != rows["dense"]["tokenizer_sha256"]:
        raise SystemExit("error: the two runs trained different tokenizers; not comparable")

    train_fields = preset(args.preset)[1]
    print(f"machine: {device_name(args.device)}; preset {args.preset}, {steps} steps of "
          f"{train_fields['batch_size']} x {preset(args.preset)[0]['context_length']} tokens, "
          f"seed {args.seed}, torch {torch.__version__}; validation: all of valid.txt; "
          f"QTF overrides: {parse_overrides(args.qtf_set) or 'none'}; train overrides: "
          f"{parse_overrides(args.train_set, '--train-set') or 'none'}")
    print("| arch | params | val ppl/token | val ppl/word | bits/byte | routed | train tok/s | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for arch, r in rows.items():
        routed = "-" if r["routed_fraction"] is None else f"{r['routed_fraction']:.2f}"
        print(f"| {arch} | {r['params']:,} | {r['perplexity_per_token']:.2f} "
              f"| {r['perplexity_per_word']:.2f} | {r['bits_per_byte']:.3f} | {routed} "
              f"| {r['train_tokens_per_s']:,.0f} | {r['train_seconds']:.0f} |")
    q, d = rows["qtf"], rows["dense"]
    print(f"\nQTF/dense word perplexity {q['perplexity_per_word'] / d['perplexity_per_word']:.3f} "
          f"(target <= 1.10); dense/QTF parameters {d['params'] / q['params']:.2f} (target >= 1.9)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": device_name(args.device), "steps": steps,
                                         "preset": args.preset,
                                         "qtf_overrides": parse_overrides(args.qtf_set),
                                         "train_overrides": parse_overrides(args.train_set,
                                                                            "--train-set"),
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
