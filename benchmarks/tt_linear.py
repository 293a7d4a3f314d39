"""Benchmark TTLinear against nn.Linear for the (d -> 4d) MLP layer, single thread.

Usage: python benchmarks/tt_linear.py [--json PATH]

Prints a markdown table, in inference mode. "TT" is TTLinear.forward with its inference
cache of W switched off, so every call pays for what it computes: the core-by-core chain,
or, where the plan says it needs fewer FLOPs, materialising W and one dense GEMM. (With the
cache on, the default at inference, those "materialise" rows run at dense speed.) "masked" is forward with an
all-ones bond mask: it always runs the core-by-core chain (plus the mask multiplies), so it
shows the chain's cost and that of the per-token adaptive-rank path.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn

from qtf_edge.host import describe_host
from qtf_edge.tt import TTLinear

D_MODELS = (128, 512, 768)
RANKS = (4, 8, 16)
TOKENS = (1, 128)


def median_seconds(fn, min_repeats=30, min_total_s=0.3) -> float:
    """Median wall time of fn() after warm-up; repeats until both floors are reached."""
    for _ in range(5):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_total_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns, rounds=7) -> list[float]:
    """Median over rounds of each fn's median time, the fns taking turns within each round,
    so that a noisy neighbour on a shared core slows all of them alike."""
    per_round = [[median_seconds(fn, min_repeats=20, min_total_s=0.05) for fn in fns]
                 for _ in range(rounds)]
    return [statistics.median(times) for times in zip(*per_round)]


def bench_row(d: int, rank: int, tokens: int) -> dict:
    torch.manual_seed(0)
    dense = nn.Linear(d, 4 * d)
    tt = TTLinear(d, 4 * d, max_rank=rank)
    tt.cache_dense = False
    x = torch.randn(tokens, d)
    plan = tt.plan
    ones = torch.ones(tokens, max(plan.ranks))
    dense_s, tt_s, masked_s = interleaved_medians(
        [lambda: dense(x), lambda: tt(x), lambda: tt(x, ones)])
    return {
        "d_model": d,
        "d_ff": 4 * d,
        "max_rank": rank,
        "tokens": tokens,
        "dense_us": dense_s * 1e6,
        "tt_us": tt_s * 1e6,
        "ratio": tt_s / dense_s,
        "masked_ratio": masked_s / dense_s,
        "dense_params": sum(p.numel() for p in dense.parameters()),
        "tt_params": sum(p.numel() for p in tt.parameters()),
        "dense_flops": 2 * tokens * d * 4 * d + tokens * 4 * d,
        "tt_flops": tt.flops(tokens) + tokens * 4 * d,  # + bias adds, as for dense
        "ranks": list(tt.ranks),
        "path": "materialise+GEMM" if plan.uses_dense(tokens) else f"chain {plan.order}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {describe_host(torch.get_num_threads())}\n")
    header = ("d", "d_ff", "rank", "ranks", "tokens", "dense us", "TT us", "TT/dense", "masked/dense",
              "dense params", "TT params", "dense FLOPs", "TT FLOPs", "path (order)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rows = []
    with torch.inference_mode():
        for d in D_MODELS:
            for rank in RANKS:
                for tokens in TOKENS:
                    row = bench_row(d, rank, tokens)
                    rows.append(row)
                    print(
                        f"| {d} | {4 * d} | {rank} | {tuple(row['ranks'])} | {tokens} | "
                        f"{row['dense_us']:.1f} | {row['tt_us']:.1f} | {row['ratio']:.2f} | "
                        f"{row['masked_ratio']:.2f} | {row['dense_params']:,} | {row['tt_params']:,} | "
                        f"{row['dense_flops']:,} | {row['tt_flops']:,} | {row['path']} |",
                        flush=True,
                    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": describe_host(1), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
