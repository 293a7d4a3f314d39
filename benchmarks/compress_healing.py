"""Healing settings for a compressed model: learning rate and distillation weight.

Compresses a trained run once (what `qtf-edge compress` does, embeddings included, default
whitened low-rank truncation), then heals a copy of it per setting LR:ALPHA:T:STEPS with
`qtf_edge.derived.heal` (what `compress --heal-steps` runs: the input model is the teacher
when ALPHA > 0) and scores each on the validation text:

    python benchmarks/compress_healing.py --run runs/bench/dense --budget params=0.25x \\
        --data-dir ../shared/data/wikitext-2 --settings 2e-4:0.5:2:1000 1e-3:0.5:2:1000
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

from qtf_edge.compress.pipeline import compress_model
from qtf_edge.data import load_tokenizer
from qtf_edge.derived import calibration_windows, heal, perplexity, validation_lines
from qtf_edge.host import describe_host
from qtf_edge.runs import load_run
from qtf_edge.train.budget import parse_budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--budget", default="params=0.25x")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--settings", nargs="+", required=True, metavar="LR:ALPHA:T:STEPS")
    parser.add_argument("--eval-tokens", type=int, default=65536)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    train, valid = args.data_dir / "train.txt", args.data_dir / "valid.txt"
    run = load_run(args.run)
    tokenizer = load_tokenizer(run.tokenizer_path)
    lines = validation_lines(valid)
    windows = calibration_windows(tokenizer, train, 16384, run.config.context_length)
    compressed = compress_model(run.model, parse_budget(args.budget), "rpi4", embeddings=True,
                                calibration=windows).model

    def score(model) -> float:
        return perplexity(model, tokenizer, lines, max_tokens=args.eval_tokens)["per_word"]

    def save() -> None:  # after every row: a run cut short keeps what it measured
        if args.json:
            args.json.write_text(json.dumps({"machine": describe_host(1), "args": {
                k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n")

    rows = [{"setting": "truncated", "ppl_word": score(compressed)}]
    print(f"truncated: word perplexity {rows[0]['ppl_word']:.1f}", flush=True)
    save()
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            lr, alpha, temperature, steps = setting.split(":")
            start = time.perf_counter()
            healed = heal(run, copy.deepcopy(compressed), Path(tmp) / setting.replace(":", "_"),
                          steps=int(steps), learning_rate=float(lr), calib=train, data=valid,
                          seed=0, overwrite=False, quiet=True, command="compress_healing.py",
                          device=args.device, distill_alpha=float(alpha),
                          distill_temperature=float(temperature))
            run.model.to("cpu")  # the teacher went to --device
            rows.append({"setting": setting, "ppl_word": score(healed.to("cpu")),
                         "seconds": time.perf_counter() - start})
            print(f"{setting}: word perplexity {rows[-1]['ppl_word']:.1f} "
                  f"({rows[-1]['seconds']:.0f} s)", flush=True)
            save()


if __name__ == "__main__":
    main()
