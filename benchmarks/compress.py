"""Compress dense `small` to 1/4, 1/8 and 1/16 of its weight bytes: issue 18's table.

Rows at each budget (bytes are the weights as they ship: weight_bytes, which the exported
graphs are checked against in tests/test_quant.py):
  (a) int8 weights alone      every quantisable layer int8 (one scale per output channel)
  (b) int4 weights alone      every quantisable layer int4 (blocks of 32)
  (c) compress --bits 4,8     the per-layer bit-width and rank search (search.py),
                              --embeddings, before and after --heal-steps of distillation
                              (at each of compress's default learning rates; the model
                              closest to the input on the calibration text is kept)
  (d) trained small           of the dense models trained from scratch in --train-dir
                              (dense-d<width>, same data, tokens, steps and seed), at float,
                              int8 or int4, the most accurate that fits
  (e) plain TT-SVD            balanced TT cores, greedy allocator, float (issue 5's method),
                              for the record
(a) and (b) are listed with their size when it is over the budget. Each row: weight MB,
the size of its exported decode graph, word perplexity on the validation split (float32,
--eval-tokens 0: all of it), its ratio to the input's, and the decode step's median time
under ONNX Runtime (one thread, one token after 64 cached, CPU of the machine it runs on).

The inputs come from `qtf-edge train --preset small --arch dense` (see
benchmarks/results/compress_gpu_commands.txt); healing and scoring run on --device:

    python benchmarks/compress.py --train-dir runs/bench --device cuda --fractions 8
        [--heal-steps 1000] [--heal-lr 3e-3,3e-4] [--eval-tokens 0] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from qtf_edge.cli.compress import parse_rates
from qtf_edge.compress.run import CompressOptions, compress_run
from qtf_edge.data import load_tokenizer
from qtf_edge.derived import perplexity, validation_lines
from qtf_edge.host import describe_host
from qtf_edge.model import QTensorFormer
from qtf_edge.profile.onnx_timing import CACHED, decode_latency
from qtf_edge.quant import quantizable_layers, weight_bytes
from qtf_edge.runs import load_run
from qtf_edge.train.budget import BudgetError

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2"
FRACTIONS = (4, 8, 16)
PROFILE = "cpu_xeon"
PRECISIONS = (None, 8, 4)


def uniform(model: QTensorFormer, bits: int | None) -> QTensorFormer:
    """`model` with every quantisable layer at `bits` (None: itself)."""
    if bits is None:
        return model
    config = dataclasses.replace(model.config,
                                 weight_bits=dict.fromkeys(quantizable_layers(model), bits))
    quantized = QTensorFormer(config)
    quantized.load_state_dict(model.state_dict())
    return quantized.eval()


def precision(bits: int | None) -> str:
    return "float" if bits is None else f"int{bits}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-dir", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--data-dir", type=Path, default=WIKITEXT)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fractions", type=int, nargs="+", default=list(FRACTIONS),
                        help="budgets: 1/N of the input's weight bytes")
    parser.add_argument("--heal-steps", type=int, default=1000)
    parser.add_argument("--heal-lr", type=parse_rates, default=CompressOptions.heal_lr,
                        help="healing learning rates, comma-separated (compress's default)")
    parser.add_argument("--calib-tokens", type=int, default=16384)
    parser.add_argument("--eval-tokens", type=int, default=0,
                        help="validation tokens to score (0: the whole split)")
    parser.add_argument("--repeats", type=int, default=200, help="decode steps timed per row")
    parser.add_argument("--keep", type=Path, default=REPO / "runs" / "compress-bench",
                        help="where the compressed runs are written")
    parser.add_argument("--no-latency", action="store_true",
                        help="skip the ONNX Runtime timing (on a GPU machine: time the rows "
                             "later on the CPU with --latency-of)")
    parser.add_argument("--latency-of", type=Path, metavar="JSON",
                        help="time the rows of an earlier run's JSON (same --train-dir and "
                             "--keep) and write it back; nothing is trained or scored")
    parser.add_argument("--rows", default="abcde",
                        help="which rows to compute (letters a-e; the input's always)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    def model_of(spec: dict) -> QTensorFormer:
        root = args.train_dir if spec["root"] == "train" else args.keep
        return uniform(load_run(root / spec["run"]).model, spec["bits"])

    def timed(model) -> dict:
        return decode_latency(model, args.repeats)

    if args.latency_of:
        doc = json.loads(args.latency_of.read_text())
        for row in doc["rows"]:
            if "ppl_word" in row:
                row.update(timed(model_of(row["model"])), timed_on=describe_host(1))
        write_table(doc, args.latency_of)
        return
    data, valid = args.data_dir / "train.txt", args.data_dir / "valid.txt"
    if not data.is_file():
        raise SystemExit(f"error: --data-dir {args.data_dir}: no train.txt (WikiText-2 expected)")
    eval_tokens = args.eval_tokens or None
    lines = validation_lines(valid)
    source = load_run(args.train_dir / "dense")
    tokenizer = load_tokenizer(source.tokenizer_path)
    full_bytes = weight_bytes(source.model)
    scratch = {int(p.name.removeprefix("dense-d")): p.name
               for p in args.train_dir.glob("dense-d*") if (p / "model.safetensors").is_file()}

    def score(model) -> float:
        return perplexity(model, tokenizer, lines, max_tokens=eval_tokens,
                          device=args.device)["per_word"]

    rows = []
    scored_on = f"first {eval_tokens:,} tokens" if eval_tokens else "every token"
    doc = {"machine": describe_host(1), "args": {k: str(v) for k, v in vars(args).items()},
           "input_weight_mb": full_bytes / 1e6, "validation": f"{scored_on} of {valid}",
           "rows": rows}

    def add(budget: str, limit: float, row: str, spec: dict, ppl: float | None = None,
            **extra) -> None:
        model = model_of(spec)
        entry = {"budget": budget, "row": row, "model": spec,
                 "weight_mb": weight_bytes(model) / 1e6, **extra}
        if weight_bytes(model) > limit:
            entry["over_budget"] = True
        else:
            entry["ppl_word"] = score(model) if ppl is None else ppl
            if not args.no_latency:
                entry.update(timed(model), timed_on=describe_host(1))
        rows.append(entry)
        print({k: v for k, v in entry.items() if k not in ("candidates", "layers")}, flush=True)
        if args.json:  # after every row: a run cut short keeps what it measured
            args.json.write_text(json.dumps(doc, indent=2) + "\n")

    add("-", full_bytes, "input: dense small, float",
        {"root": "train", "run": "dense", "bits": None})
    for fraction in args.fractions:
        budget, limit = f"1/{fraction}", full_bytes / fraction
        for row, label, bits in (("a", "(a) int8 weights alone", 8),
                                 ("b", "(b) int4 weights alone", 4)):
            if row in args.rows:
                add(budget, limit, label, {"root": "train", "run": "dense", "bits": bits})
        options = CompressOptions(budget=f"size_mb={1 / fraction!r}x", target=PROFILE,
                                  embeddings=True, bits=(4, 8), calib=str(data),
                                  data=str(valid), calib_tokens=args.calib_tokens,
                                  eval_tokens=eval_tokens, heal_steps=args.heal_steps,
                                  heal_lr=args.heal_lr,
                                  device=args.device)
        name = f"search-1_{fraction}"
        report = None if "c" not in args.rows else compress_run(
            args.train_dir / "dense", args.keep / name, options, overwrite=True)
        searched = {"root": "keep", "run": name, "bits": None}
        # the healed run has the unhealed one's layers, bytes and graph: only weights differ
        if report:
            add(budget, limit, "(c) compress --bits 4,8, before healing", searched,
                report["perplexity"]["truncated"]["per_word"], candidates=report["candidates"],
                layers=report["layers"], elapsed_s=report["elapsed_s"])
        if report and args.heal_steps:
            kept = next(t["learning_rate"] for t in report["healing"] if t["kept"])
            add(budget, limit, f"(c) compress --bits 4,8, {args.heal_steps} healing steps, "
                f"kept: {'unhealed' if kept is None else f'lr {kept:g}'}", searched,
                report["perplexity"].get("healed", report["perplexity"]["truncated"])
                ["per_word"], healing=report["healing"])
        best = {}  # per precision, the widest model that fits: more width, lower perplexity
        for width, run in scratch.items():
            for bits in PRECISIONS:
                spec = {"root": "train", "run": run, "bits": bits}
                if weight_bytes(model_of(spec)) <= limit and width > best.get(bits, (0,))[0]:
                    best[bits] = (width, spec)
        scored = sorted((score(model_of(spec)), width, spec) for width, spec in best.values()
                        if "d" in args.rows)
        if scored:
            ppl, width, spec = scored[0]
            add(budget, limit, f"(d) trained small, d={width}, {precision(spec['bits'])}",
                spec, ppl, alternatives=[{"d": w, "weights": precision(s["bits"]),
                                          "ppl_word": p} for p, w, s in scored])
        name = f"plain-1_{fraction}"
        if "e" not in args.rows:
            continue
        try:
            plain = compress_run(args.train_dir / "dense", args.keep / name,
                                 dataclasses.replace(options, bits=None, method="plain",
                                                     layout="balanced", heal_steps=0),
                                 overwrite=True)
            add(budget, limit, "(e) plain TT-SVD, float", {"root": "keep", "run": name,
                                                          "bits": None},
                plain["perplexity"]["truncated"]["per_word"])
        except BudgetError as error:
            rows.append({"budget": budget, "row": "(e) plain TT-SVD, float",
                         "unmet": str(error)})
    write_table(doc, args.json)


def write_table(doc: dict, path: Path | None) -> None:
    """Print the markdown table (ratios against the input's perplexity); write the JSON."""
    rows = doc["rows"]
    base = rows[0]["ppl_word"]
    print(f"\nscored on: {doc['machine']}; input {doc['input_weight_mb']:.3f} MB of float "
          f"weights; validation: {doc['validation']}; decode: ONNX Runtime, 1 thread, 1 token "
          f"after {CACHED} cached, on {rows[0].get('timed_on', 'not timed')}\n")
    print("| budget | row | weight MB | decode graph MB | ppl/word | vs input | decode ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mb = f"{r['weight_mb']:.3f}" if "weight_mb" in r else "-"
        if "ppl_word" not in r:
            why = "over budget" if r.get("over_budget") else "cannot be met"
            print(f"| {r['budget']} | {r['row']} | {mb} | - | {why} | - | - |")
            continue
        graph = f"{r['decode_graph_mb']:.3f}" if "decode_graph_mb" in r else "-"
        ms = f"{r['decode_ms']:.3f}" if "decode_ms" in r else "-"
        print(f"| {r['budget']} | {r['row']} | {mb} | {graph} | {r['ppl_word']:.1f} "
              f"| {r['ppl_word'] / base:.3f}x | {ms} |")
    if path:
        path.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
