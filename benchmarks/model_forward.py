"""Forward time of QTensorFormer against the dense baseline of the same width and depth.

CPU, batch 1 x 128 tokens, inference mode, one thread unless --threads. Both models run
side by side in this process, alternating, and the median of --repeats is reported.
The share of QTF time spent simulating circuits (quantum encoder, QKSAM states and
kernel attention, DARUAN activations) is measured in a separate pass with timers wrapped
around those calls, so that the timed passes carry no instrumentation.

    python benchmarks/model_forward.py [--sizes small,medium,large] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import contextmanager

import torch

from qtf_edge.config import ModelConfig
from qtf_edge.host import describe_host
from qtf_edge.cost.counts import count_params, model_cost, total
from qtf_edge.model import QTensorFormer
from qtf_edge.model.encoder import QuantumTokenEncoder
from qtf_edge.presets import preset
from qtf_edge.model.qksam import QuantumKernelAttention
from qtf_edge.quantum import DARUAN

QUANTUM_CALLS = {  # (class, method) pairs whose time counts as circuit simulation
    "encoder": (QuantumTokenEncoder, "forward"),
    "qksam_states": (QuantumKernelAttention, "states"),
    "qksam_kernel": (QuantumKernelAttention, "attention"),
    "daruan": (DARUAN, "forward"),
}


def time_forward(model, ids, repeats: int) -> list[float]:
    with torch.inference_mode():
        model(ids)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(ids)
            samples.append(time.perf_counter() - start)
    return samples


@contextmanager
def timed_calls(spent: dict[str, float], calls: dict = QUANTUM_CALLS):
    """Wrap the given (class, method) calls with wall-clock timers (single thread: wall =
    CPU time)."""
    originals = {}
    for label, (cls, name) in calls.items():
        original = getattr(cls, name)
        originals[label] = original

        def timed(self, *args, _original=original, _label=label, **kwargs):
            start = time.perf_counter()
            out = _original(self, *args, **kwargs)
            spent[_label] += time.perf_counter() - start
            return out

        setattr(cls, name, timed)
    try:
        yield
    finally:
        for label, (cls, name) in calls.items():
            setattr(cls, name, originals[label])


def call_shares(model, ids, repeats: int, calls: dict = QUANTUM_CALLS) -> dict[str, float]:
    """Share of the forward time spent in each of `calls` (a separate, instrumented pass)."""
    spent = {label: 0.0 for label in calls}
    with timed_calls(spent, calls), torch.inference_mode():
        model(ids)
        for label in spent:
            spent[label] = 0.0
        start = time.perf_counter()
        for _ in range(repeats):
            model(ids)
        elapsed = time.perf_counter() - start
    return {label: seconds / elapsed for label, seconds in spent.items()}


def measure(size: str, seq_len: int, repeats: int) -> dict:
    model_fields, train_fields = preset(size)  # the QTF preset; its vocabulary is the train one
    qtf_config = ModelConfig(**model_fields, vocab_size=train_fields["vocab_size"])
    models = {"qtf": QTensorFormer(qtf_config).eval(),
              "dense": QTensorFormer(qtf_config.dense_baseline()).eval()}
    ids = torch.randint(0, qtf_config.vocab_size, (1, seq_len))
    samples = {name: [] for name in models}
    for _ in range(5):  # alternate in rounds so drift hits both models alike
        for name, model in models.items():
            samples[name] += time_forward(model, ids, max(1, repeats // 5))
    ms = {name: 1e3 * statistics.median(s) for name, s in samples.items()}
    share = call_shares(models["qtf"], ids, max(1, repeats // 2))
    return {
        "size": size, "seq_len": seq_len,
        "d_model": qtf_config.d_model, "n_layers": qtf_config.n_layers,
        "dense_ms": ms["dense"], "qtf_ms": ms["qtf"], "ratio": ms["qtf"] / ms["dense"],
        "dense_params": count_params(models["dense"]), "qtf_params": count_params(models["qtf"]),
        "dense_gflops": total(model_cost(models["dense"], seq_len)).flops / 1e9,
        "qtf_gflops": total(model_cost(models["qtf"], seq_len)).flops / 1e9,
        "quantum_share": sum(share.values()),
        **{f"share_{label}": value for label, value in share.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="small,medium,large")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"machine: {describe_host(args.threads)}; batch 1 x {args.seq_len} tokens, "
          f"median of {args.repeats}")
    print("| size | d | L | dense ms | QTF ms | QTF/dense | dense params | QTF params "
          "| dense GFLOP | QTF GFLOP | quantum share (enc / qksam states / qksam kernel / daruan) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for size in args.sizes.split(","):
        r = measure(size, args.seq_len, args.repeats)
        rows.append(r)
        print(f"| {size} | {r['d_model']} | {r['n_layers']} | {r['dense_ms']:.2f} "
              f"| {r['qtf_ms']:.2f} | {r['ratio']:.2f} | {r['dense_params']:,} "
              f"| {r['qtf_params']:,} | {r['dense_gflops']:.3f} | {r['qtf_gflops']:.3f} "
              f"| {r['quantum_share']:.0%} ({r['share_encoder']:.0%} / "
              f"{r['share_qksam_states']:.0%} / {r['share_qksam_kernel']:.0%} / "
              f"{r['share_daruan']:.0%}) |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": describe_host(args.threads), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
