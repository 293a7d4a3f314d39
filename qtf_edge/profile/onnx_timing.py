"""Median ONNX Runtime times of a model's exported prefill and decode graphs, in process.

`profile` measures a bundle through its own runner (run.py, a process per artifact), which
is what a device does; this module times graphs where a tool compares many models in one
process: the benchmarks' side-by-side tables, and compress's measured decode_ms budget,
which exports each candidate it weighs. Same settings in both: random token ids, a warm-up
call, then the median of `repeats` calls.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from qtf_edge.export.onnx_graphs import export_onnx
from qtf_edge.export.validate import run_graph, session

CACHED = 64  # tokens in the cache when a decode step is timed (at most context - 1)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def graph_latency(folder: Path, suffix: str, repeats: int, prompt: int,
                  threads: int = 1) -> dict:
    """{prefill_ms: a `prompt`-token prefill, decode_ms: one token after prompt - 1 cached}
    of folder/prefill{suffix}.onnx and decode{suffix}.onnx."""
    prefill = session(folder / f"prefill{suffix}.onnx", threads=threads)
    decode = session(folder / f"decode{suffix}.onnx", threads=threads)
    vocab = prefill.get_outputs()[0].shape[-1]
    ids = np.random.default_rng(0).integers(0, vocab, (1, prompt), dtype=np.int64)
    _, past = run_graph(prefill, {"input_ids": ids[:, :-1]})
    step = {"input_ids": ids[:, -1:], **past}
    return {"prefill_ms": median_ms(lambda: prefill.run(None, {"input_ids": ids}), repeats),
            "decode_ms": median_ms(lambda: decode.run(None, step), repeats)}


def decode_latency(model, repeats: int = 100, threads: int = 1) -> dict:
    """Export `model` to a scratch folder and time its decode step after CACHED tokens (or
    context - 1): {decode_ms, decode_graph_mb}."""
    with tempfile.TemporaryDirectory() as scratch:
        export_onnx(model, Path(scratch))
        cached = min(CACHED, model.config.context_length - 1)
        timed = graph_latency(Path(scratch), "", repeats, cached + 1, threads)
        graph_mb = (Path(scratch) / "decode.onnx").stat().st_size / 1e6
    return {"decode_ms": timed["decode_ms"], "decode_graph_mb": graph_mb}
