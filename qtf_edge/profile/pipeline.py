"""`profile_bundle`: measure a bundle here, label its energy, predict it elsewhere."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

from qtf_edge.cost.profiles import HardwareProfile, load_profile
from qtf_edge.data import default_corpus, load_tokenizer, read_corpus
from qtf_edge.export.bundle import verify_bundle
from qtf_edge.profile.measure import (
    decode_workload,
    measure_artifact,
    measure_torch,
    present_artifacts,
    source_run,
)
from qtf_edge.profile.operators import decode_breakdown
from qtf_edge.profile.predict import MEASURED, host_energy, predict

DEFAULT_TARGETS = ("rpi4", "rpi5", "edge_tpu", "edge_mobile")


@dataclass(frozen=True)
class ProfileOptions:
    host_profile: str = "cpu_xeon"          # the profile that describes this machine
    targets: tuple[str, ...] = DEFAULT_TARGETS  # profiles to predict for
    runs: int = 20                          # generations per artifact
    seq_len: int = 32                       # prompt tokens
    new_tokens: int = 16                    # tokens generated per run
    threads: int = 1                        # runtime threads, here and (assumed) there
    data: str | None = None                 # prompt text (default: shipped valid excerpt)


def per_threads(profile: HardwareProfile, threads: int) -> HardwareProfile:
    """The profile's compute for `threads` of its cores (memory bandwidth is shared, so it
    stays); unchanged when the profile does not give its core count."""
    cores = profile.optional.get("cores")
    if cores is None or threads >= cores.value:
        return profile
    return dataclasses.replace(profile, peak_flops=profile.peak_flops * threads / cores.value)


def _prompt(bundle: Path, options: ProfileOptions) -> tuple[str, list[int]]:
    """The prompt's text (for run.py) and ids: the first --seq-len tokens of --data."""
    tokenizer = load_tokenizer(bundle / "tokenizer.json")
    source = Path(options.data) if options.data else default_corpus("valid")
    ids = [i for line in read_corpus(source) for i in tokenizer.encode(line).ids]
    if len(ids) < options.seq_len:
        raise ValueError(f"--data {source}: {len(ids)} tokens; expected at least "
                         f"--seq-len {options.seq_len}")
    return tokenizer.decode(ids[:options.seq_len]), ids[:options.seq_len]


def _check(options: ProfileOptions, context: int) -> tuple[HardwareProfile, list]:
    for flag, value in (("--runs", options.runs), ("--seq-len", options.seq_len),
                        ("--new-tokens", options.new_tokens), ("--threads", options.threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} must be an integer >= 1, got {value!r}")
    if options.seq_len + options.new_tokens >= context:
        raise ValueError(f"--seq-len {options.seq_len} + --new-tokens {options.new_tokens} "
                         f"must stay below the bundle's context of {context} tokens")
    return load_profile(options.host_profile), [load_profile(t) for t in options.targets]


def profile_bundle(bundle, options: ProfileOptions = ProfileOptions(), *,
                   progress=lambda line: None) -> dict:
    """Measured rows per artifact, their energy (measured by RAPL, else estimated, and
    labelled), and predictions for options.targets (labelled predicted)."""
    bundle = Path(bundle)
    manifest = verify_bundle(bundle)
    host, targets = _check(options, manifest["context_length"])
    prompt, prompt_ids = _prompt(bundle, options)
    run = source_run(manifest)
    rows = []
    if run is not None:
        progress("measuring torch (eager)")
        rows.append(measure_torch(run, prompt_ids, options.new_tokens, options.runs,
                                  options.threads))
    for artifact in present_artifacts(manifest):
        progress(f"measuring {artifact}")
        rows.append(measure_artifact(bundle, manifest, artifact, prompt, options.new_tokens,
                                     options.runs, options.threads))
    for row in rows:
        decode = row["decode_ms_per_token"]
        if row["energy"]["measured"]:
            row["energy"] = {**row["energy"], "label": MEASURED,
                             "energy_uj": row["energy"]["joules_per_token"] * 1e6}
        elif decode is not None:
            row["energy"] = {**host_energy(decode["median"], host, options.threads),
                             "reason": row["energy"]["reason"]}
    context = options.seq_len + options.new_tokens // 2  # the mean decode step's context
    # after the torch row: this sets the decode graph's lowerings on the run's model
    workload = None if run is None else decode_workload(run, manifest, context)
    onnx = next((r for r in rows if r["artifact"] == "onnx"), None)
    notes = []
    predictions = []
    if workload is None:
        notes.append(f"no torch row and no predictions: the source run "
                     f"{manifest['source']['path']} is gone or changed since the export")
    elif onnx is None or onnx["decode_ms_per_token"] is None:
        notes.append("no predictions: the bundle has no float ONNX decode graph to measure")
    else:
        measured = onnx["decode_ms_per_token"]["median"]
        predictions = [predict(workload, measured, per_threads(host, options.threads),
                               per_threads(target, options.threads)) for target in targets]
    operators = None
    if onnx is not None:
        progress("profiling the decode graph's operators")
        operators = decode_breakdown(bundle, prompt_ids, options.new_tokens, options.threads)
    return {"bundle": str(bundle), "target": manifest["target"], "options": asdict(options),
            "operators": operators,
            "host_profile": host.name, "measured": rows, "decode_context": context,
            "workload": {part: {"flops": f, "bytes": b} for part, (f, b) in
                         (workload or {}).items()},
            "predictions": predictions, "notes": notes}
