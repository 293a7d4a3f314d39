"""--measure, on the CPU: export each finished latency row to an ONNX bundle (in spawned
worker processes: export_bundle is a module-level function for them to import), then time
every bundle in interleaved rounds, one thread."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from qtf_edge.atomic import write_json_atomic
from qtf_edge.config import ModelConfig

from .data import data_paths
from .plan import BENCH, QUICK_BENCH, Layout, Row, read_json, utc_now

# ---------------------------------------------------------------------------- measure (CPU)

def weights_source(layout: Layout, row: Row, result: dict) -> tuple[Path | None, str]:
    """The run folder to export and what its weights are: the trained run (here or from a
    pack), else a same-shape untrained model. ONNX graphs are static: every path runs for
    every token whatever the weights, so the decode time does not depend on their values."""
    from qtf_edge.runs import RunError, load_run, save_run

    for folder in (layout.train(row), layout.weights(row)):
        try:
            load_run(folder)
            return folder, "trained"
        except RunError:
            continue
    description = result["description"]
    import torch

    from qtf_edge.model import QTensorFormer
    from qtf_edge.tt import TTLinear

    torch.manual_seed(0)
    model = QTensorFormer(ModelConfig.from_dict(description["config"])).eval()
    ranks = {name: list(m.ranks[1:-1]) for name, m in model.named_modules()
             if isinstance(m, TTLinear)}
    if ranks != description["tt_ranks"]:
        return None, "weights not here, and their TT ranks differ from the config's"
    folder = layout.untrained(row)
    if not (folder / "model.safetensors").is_file():
        save_run(folder, model, layout.tokenizer, command=f"untrained stand-in of {row.name}",
                 overwrite=True)
    return folder, "untrained, same shape (trained weights too large to bring back)"


def export_bundle(source: Path, bundle: Path, quick: bool) -> tuple[dict, float]:
    """qtf-edge export for the cpu target (QTF distilled to its deploy form first); an
    existing bundle of the same source weights is reused."""
    from qtf_edge.export.bundle import verify_bundle
    from qtf_edge.export.pipeline import ExportOptions, export_run
    from qtf_edge.runs import sha256_file

    source_sha = sha256_file(source / "model.safetensors")
    if (bundle / "manifest.json").is_file():
        try:
            manifest = verify_bundle(bundle)
            if manifest["source"]["model_sha256"] == source_sha:
                return manifest, 0.0
        except ValueError:
            pass
    # Distillation calibrates and the bundle validates on the shipped excerpts (the same
    # distribution as WikiText-2); neither is a reported perplexity.
    options = (ExportOptions(target="cpu", distill=True, eval_tokens=1024, calib_tokens=1024,
                             decode_windows=1, decode_steps=8, force=True) if quick
               else ExportOptions(target="cpu", distill=True, force=True))
    start = time.perf_counter()
    export_run(source, bundle, options)
    return verify_bundle(bundle), time.perf_counter() - start


def local_valid_text(args, meta: dict) -> str:
    """The validation text the plan recorded, or this machine's copy of it (the plan was
    written on the GPU machine, whose paths differ)."""
    recorded = meta["data"]["valid"]
    return recorded if Path(recorded).is_file() else data_paths(args)["valid"]


def bench_prompt(valid_text: str, words: int) -> str:
    """The first `words` words of the first long enough validation line: a fixed prompt."""
    from qtf_edge.data import read_corpus

    for line in read_corpus(valid_text):
        if len(line.split()) >= words:
            return " ".join(line.split()[:words])
    raise ValueError(f"{valid_text}: no line of {words} words for the benchmark prompt")


def export_all(args, layout: Layout, plan: list[Row]) -> dict[str, tuple]:
    """{row name: (row, manifest, weights, export seconds)} of every finished latency row.
    The exports run in up to --jobs-per-gpu processes at once, one per core (torch.onnx's
    export is mostly one thread of Python); a failed one is recorded and the others go on."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    sources = {}
    for row in plan:
        result = read_json(layout.result(row))
        if not row.latency or not result or result.get("status") != "done":
            continue
        source, weights = weights_source(layout, row, result)
        if source is None:
            write_json_atomic(layout.latency(row), {"row": row.name, "error": weights})
        else:
            sources[row.name] = (row, source, weights)
    bundles = {}
    # spawn, not fork: forking a process that has run torch's thread pools can hang
    context = multiprocessing.get_context("spawn")
    workers = max(1, min(args.jobs_per_gpu, os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {name: pool.submit(export_bundle, source, layout.bundle(row), args.quick)
                   for name, (row, source, _) in sources.items()}
        for name, future in futures.items():
            row, _, weights = sources[name]
            try:
                manifest, seconds = future.result()
            # any exporter error: recorded, and the other rows go on
            except Exception as error:  # noqa: BLE001
                write_json_atomic(layout.latency(row), {"row": name, "error": f"export: {error}"})
                say(args, f"export {name}: failed ({error})")
                continue
            say(args, f"export {name} ({weights.split(',')[0]} weights): "
                      + (f"{seconds:.0f} s" if seconds else "reused"))
            bundles[name] = (row, manifest, weights, seconds)
    return bundles


def measure_mode(args, layout: Layout, plan: list[Row], meta: dict) -> None:
    """Export each finished latency row, then time every bundle --bench-rounds times,
    interleaved (this VM's speed drifts; a row's figure is the median of its rounds), one
    bundle at a time."""
    from qtf_edge.host import describe_host
    from qtf_edge.profile.measure import measure_artifact

    settings = QUICK_BENCH if meta.get("quick") else BENCH
    prompt = bench_prompt(local_valid_text(args, meta), settings["prompt_words"])
    new_tokens, runs = settings["new_tokens"], settings["runs"]
    bundles = export_all(args, layout, plan)
    timings = {name: [] for name in bundles}
    for round_index in range(args.bench_rounds):
        say(args, f"bench round {round_index + 1}/{args.bench_rounds} "
                  f"({len(bundles)} bundles, one thread)")
        for name, (row, manifest, _, _) in bundles.items():
            timings[name].append(measure_artifact(layout.bundle(row), manifest, "onnx", prompt,
                                                  new_tokens, runs, threads=1))
    for name, (row, manifest, weights, seconds) in bundles.items():
        rounds = timings[name]
        write_json_atomic(layout.latency(row), {
            "row": name, "weights": weights, "export_s": seconds, "host": describe_host(1),
            "measured_utc": utc_now(), "prompt_tokens": rounds[0]["prompt_tokens"],
            "new_tokens": new_tokens, "runs": runs, "rounds_n": len(rounds), "threads": 1,
            "decode_ms": statistics.median(r["decode_ms_per_token"]["median"] for r in rounds),
            "prefill_ms": statistics.median(r["prefill_ms"]["median"] for r in rounds),
            "onnx_mb": rounds[0]["file_mb"],
            "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in rounds), "rounds": rounds})


def say(args, text: str) -> None:
    if not args.quiet:
        print(text, flush=True)
