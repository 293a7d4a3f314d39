"""Distill a trained QTF into its deploy form: fit errors, perplexities and CPU latency.

Trains a QTF first when no --run is given (`--preset`, `--steps`, on --data), then runs
`qtf_edge.distill.distill_run` (what `qtf-edge distill` runs) with healing, and times
the forward pass of the simulated and the deploy form side by side in this process:
batch 1 x 128 tokens, one thread, alternating rounds, median of --repeats. The share of
each form's time spent in its circuit parts (encoder with its entropy, QKSAM states and
kernel, DARUAN or B-spline activations) comes from a separate, instrumented pass.

    python benchmarks/distill.py [--run RUN] [--preset small --steps 300 --data FILE]
        [--valid FILE] [--calib FILE] [--grid 16] [--finetune-steps 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from model_forward import QUANTUM_CALLS, call_shares, time_forward

from qtf_edge.distill import DistillOptions, distill_run
from qtf_edge.host import describe_host
from qtf_edge.kan import BSplineActivation
from qtf_edge.runs import load_run
from qtf_edge.train import train_run

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2"
DEPLOY_CALLS = {**{k: v for k, v in QUANTUM_CALLS.items() if k != "daruan"},
                "bspline": (BSplineActivation, "forward")}


def latency(models: dict, seq_len: int, repeats: int) -> dict[str, float]:
    """Median forward ms per model, measured in alternating rounds."""
    vocab = next(iter(models.values())).config.vocab_size
    ids = torch.randint(0, vocab, (1, seq_len))
    samples = {name: [] for name in models}
    for _ in range(5):  # alternate so that drift hits every model alike
        for name, model in models.items():
            samples[name] += time_forward(model, ids, max(1, repeats // 5))
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}


def train_if_needed(args, work: Path) -> Path:
    if args.run:
        return Path(args.run)
    data = args.data or (WIKITEXT / "train.txt" if (WIKITEXT / "train.txt").is_file() else None)
    valid = args.valid or (WIKITEXT / "valid.txt" if (WIKITEXT / "valid.txt").is_file() else None)
    print(f"training {args.preset} QTF for {args.steps} steps on {data or 'the shipped excerpt'}",
          flush=True)
    result = train_run(work / "qtf", preset_name=args.preset, data=data, valid=valid,
                       train_overrides={"steps": args.steps, "device": args.device},
                       quiet=True, command="benchmarks/distill.py")
    return result.run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a trained simulated QTF run folder")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", help="training text when training [default: WikiText-2 "
                                       "train if ../shared has it, else the shipped excerpt]")
    parser.add_argument("--valid", help="validation text [default: WikiText-2 valid if "
                                        "present, else the shipped excerpt]")
    parser.add_argument("--calib", help="calibration and healing text [default: WikiText-2 "
                                        "train if present, else the shipped excerpt]")
    parser.add_argument("--calib-tokens", type=int, default=16384)
    parser.add_argument("--eval-tokens", type=int, default=65536)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run_dir = train_if_needed(args, work)
        valid = args.valid or (str(WIKITEXT / "valid.txt") if (WIKITEXT / "valid.txt").is_file()
                               else None)
        calib = args.calib or (str(WIKITEXT / "train.txt") if (WIKITEXT / "train.txt").is_file()
                               else None)
        options = DistillOptions(calib=calib, calib_tokens=args.calib_tokens, data=valid,
                                 eval_tokens=args.eval_tokens, grid=args.grid, order=args.order,
                                 finetune_steps=args.finetune_steps)
        start = time.perf_counter()
        report = distill_run(run_dir, work / "deploy", options, quiet=True,
                             command="benchmarks/distill.py")
        distill_s = time.perf_counter() - start
        torch.set_num_threads(args.threads)
        models = {"simulated": load_run(run_dir).model, "deploy": load_run(work / "deploy").model}
        seq_len = min(args.seq_len, models["simulated"].config.context_length)
        ms = latency(models, seq_len, args.repeats)
        ids = torch.randint(0, models["simulated"].config.vocab_size, (1, seq_len))
        shares = {"simulated": call_shares(models["simulated"], ids, args.repeats // 2),
                  "deploy": call_shares(models["deploy"], ids, args.repeats // 2, DEPLOY_CALLS)}

    print(f"\nmachine: {describe_host(args.threads)}; run {run_dir}; distill took {distill_s:.0f} s "
          f"(calibration {args.calib_tokens:,} tokens of {calib or 'the shipped excerpt'}, grid "
          f"{args.grid}, order {args.order}, healing {args.finetune_steps} steps at peak "
          f"learning rate {options.finetune_lr:g})\n")
    print("| layer | channels | fit range | max abs error | error bound | RMS error |")
    print("|---|---|---|---|---|---|")
    for r in report.layers:
        print(f"| {r['layer']} | {r['channels']} | [{r['fit_min']:.2f}, {r['fit_max']:.2f}] "
              f"| {r['max_abs_error']:.2e} | {r['error_bound']:.2e} | {r['rms_error']:.2e} |")
    original = report.perplexity["original"]["per_word"]
    print(f"\nvalidation ({report.perplexity['original']['tokens']:,} tokens of "
          f"{valid or 'the shipped excerpt'}):\n")
    print("| model | ppl/token | ppl/word | vs original | routed |")
    print("|---|---|---|---|---|")
    for name, p in report.perplexity.items():
        print(f"| {name} | {p['per_token']:.2f} | {p['per_word']:.2f} "
              f"| {p['per_word'] / original - 1:+.2%} | {p['routed_fraction']:.3f} |")
    folding, logits = report.folding, report.logits
    print(f"\nfolding alone: routes {folding['route_agreement']:.4%}, ranks "
          f"{folding['rank_agreement']:.4%} agree ({folding['ties']} ties); deploy logits: "
          f"max |diff| {logits['max_abs_diff']:.3g}, top-1 agreement "
          f"{logits['top1_agreement']:.4%}\n")
    print(f"| form | forward ms (1 x {seq_len}) | vs simulated | time in circuit parts |")
    print("|---|---|---|---|")
    for name in ("simulated", "deploy"):
        parts = " / ".join(f"{label} {share:.0%}" for label, share in shares[name].items())
        print(f"| {name} | {ms[name]:.2f} | {ms['simulated'] / ms[name]:.2f}x faster | {parts} |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": describe_host(args.threads), "run": str(run_dir), "args": vars(args),
            "distill_s": distill_s, "report": report.to_dict(), "seq_len": seq_len, "forward_ms": ms,
            "shares": shares}, indent=2) + "\n")


if __name__ == "__main__":
    main()
