"""`profile_path` / `profile_subject`: measure a bundle or a run folder here, label its energy, predict it
elsewhere."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

from qtf_edge.cost.profiles import HardwareProfile, load_profile
from qtf_edge.data import default_corpus, load_tokenizer, read_corpus
from qtf_edge.export.bundle import MANIFEST_FILE, verify_bundle
from qtf_edge.export.workload import (
    NEW_TOKENS,
    PROMPT_TOKENS,
    decode_context,
    graph_lowering,
    step_workload,
)
from qtf_edge.profile.measure import (
    measure_artifact,
    measure_torch,
    present_artifacts,
    source_run,
)
from qtf_edge.profile.operators import decode_breakdown
from qtf_edge.profile.torch_parts import torch_decode_breakdown
from qtf_edge.profile.predict import (
    CALIBRATED_THREADS,
    MEASURED,
    Query,
    calibrated_efficiency,
    co2_g,
    host_energy,
    predict,
)
from qtf_edge.runs import CONFIG_FILE, MODEL_FILE, Run, load_run

DEFAULT_TARGETS = ("rpi4", "rpi5", "edge_tpu", "edge_mobile")


@dataclass(frozen=True)
class ProfileOptions:
    host_profile: str = "cpu_xeon"          # the profile that describes this machine
    targets: tuple[str, ...] = DEFAULT_TARGETS  # profiles (names or YAML paths) to predict for
    runs: int = 20                          # generations per artifact
    seq_len: int = PROMPT_TOKENS            # prompt tokens
    new_tokens: int = NEW_TOKENS            # tokens generated per run
    threads: int = 1                        # runtime threads, here and (assumed) there
    data: str | None = None                 # prompt text (default: shipped valid excerpt)


def per_threads(profile: HardwareProfile, threads: int) -> HardwareProfile:
    """The profile's compute for `threads` of its cores (memory bandwidth is shared, so it
    stays); unchanged when the profile does not give its core count."""
    cores = profile.optional.get("cores")
    if cores is None or threads >= cores.value:
        return profile
    return dataclasses.replace(profile, peak_flops=profile.peak_flops * threads / cores.value)


def _prompt(tokenizer_path: Path, options: ProfileOptions) -> tuple[str, list[int]]:
    """The prompt's text (for run.py) and ids: the first --seq-len tokens of --data."""
    tokenizer = load_tokenizer(tokenizer_path)
    source = Path(options.data) if options.data else default_corpus("valid")
    ids = [i for line in read_corpus(source) for i in tokenizer.encode(line).ids]
    if len(ids) < options.seq_len:
        raise ValueError(f"--data {source}: {len(ids)} tokens; expected at least "
                         f"--seq-len {options.seq_len}")
    return tokenizer.decode(ids[:options.seq_len]), ids[:options.seq_len]


def check_options(options: ProfileOptions, context: int, what: str
                  ) -> tuple[HardwareProfile, list]:
    """(host profile, target profiles) once the options are known good for a `what`
    ("bundle" or "run") of `context` tokens; ValueError (one line) naming the flag."""
    for flag, value in (("--runs", options.runs), ("--seq-len", options.seq_len),
                        ("--new-tokens", options.new_tokens), ("--threads", options.threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} must be an integer >= 1, got {value!r}")
    if options.seq_len + options.new_tokens >= context:
        raise ValueError(f"--seq-len {options.seq_len} + --new-tokens {options.new_tokens} "
                         f"must stay below the {what}'s context of {context} tokens")
    return load_profile(options.host_profile), [load_profile(t) for t in options.targets]


def label_energy(row: dict, host: HardwareProfile, options: ProfileOptions) -> None:
    """Label a measured row's energy, per token and per query: measured where run.py's
    bench read RAPL counters, else estimated from the host profile over the measured time.
    A query is one bench run: the prompt's prefill, then --new-tokens - 1 decode steps."""
    energy, decode, prefill = row["energy"], row["decode_ms_per_token"], row["prefill_ms"]
    if energy["measured"]:
        per_query_j = energy["joules"] / row["runs"]
        row["energy"] = {**energy, "label": MEASURED,
                         "energy_uj": energy["joules_per_token"] * 1e6,
                         "co2_g": co2_g(energy["joules_per_token"], host),
                         "per_query": {"energy_uj": per_query_j * 1e6,
                                       "co2_g": co2_g(per_query_j, host)}}
        return
    if decode is None or prefill is None:
        return
    query_ms = prefill["median"] + (options.new_tokens - 1) * decode["median"]
    per_query = host_energy(query_ms, host, options.threads)
    row["energy"] = {**host_energy(decode["median"], host, options.threads),
                     "reason": energy["reason"],
                     "per_query": {"ms": query_ms, "energy_uj": per_query["energy_uj"],
                                   "co2_g": per_query["co2_g"]}}


def _workloads(model, options: ProfileOptions, manifest: dict | None) -> dict:
    """The query's prefill and mean decode step {part: (FLOPs, bytes)}: with a bundle's
    manifest, on the lowerings its export chose for each graph; else as the model is."""
    def lowering(graph):
        return None if manifest is None else graph_lowering(manifest, graph)

    context = decode_context(options.seq_len, options.new_tokens)
    return {"decode_context": context,
            "prefill": step_workload(model, options.seq_len, options.seq_len,
                                     lowering("prefill")),
            "decode": step_workload(model, 1, context, lowering("decode"))}


def _predictions(workloads: dict, row: dict, host, targets, options) -> tuple[list, list]:
    """Predictions for every target from a measured row; and a note per target whose
    profile brings its own efficiency, saying what that efficiency was measured on."""
    query = Query(options.new_tokens - 1, workloads["prefill"], row["prefill_ms"]["median"])
    predictions = [predict(workloads["decode"], row["decode_ms_per_token"]["median"],
                           per_threads(host, options.threads),
                           per_threads(target, options.threads), query)
                   for target in targets]
    notes = []
    for target in targets:
        if calibrated_efficiency(target) is None:
            continue
        threads = target.optional.get(CALIBRATED_THREADS)
        at = "" if threads is None else f" with {threads.value:g} thread(s)"
        notes.append(f"{target.name}: its efficiency was calibrated on the device{at} on "
                     f"the bundle its decode_efficiency source names ({target.path}); it "
                     f"carries over to other graphs as far as they behave alike"
                     + ("" if threads is None or threads.value == options.threads
                        else f", and here is used for --threads {options.threads}"))
    return predictions, notes


def _report(options: ProfileOptions, host, rows, workloads, predictions, notes,
            **identity) -> dict:
    workloads = workloads or {}
    return {**identity, "options": asdict(options), "host_profile": host.name,
            "measured": rows, "decode_context": workloads.get("decode_context"),
            "query": {"prompt_tokens": options.seq_len, "new_tokens": options.new_tokens,
                      "decode_steps": options.new_tokens - 1,
                      "definition": "one timed generation: the prompt's prefill, then "
                                    "new_tokens - 1 decode steps"},
            "workload": {part: {"flops": f, "bytes": b}
                         for part, (f, b) in workloads.get("decode", {}).items()},
            "prefill_workload": {part: {"flops": f, "bytes": b}
                                 for part, (f, b) in workloads.get("prefill", {}).items()},
            "predictions": predictions, "notes": notes}


@dataclass(frozen=True)
class Subject:
    """What is profiled: a bundle (its verified manifest, and its source run where that is
    still there unchanged) or a run folder (no manifest)."""
    path: Path
    manifest: dict | None
    run: Run | None


def open_subject(path) -> Subject:
    """A bundle (it has manifest.json; verified) or a run folder (config.json and
    model.safetensors; loaded); ValueError (one line) for anything else."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        manifest = verify_bundle(path)
        return Subject(path, manifest, source_run(manifest))
    if (path / CONFIG_FILE).is_file() and (path / MODEL_FILE).is_file():
        return Subject(path, None, load_run(path))
    what = ("not found" if not path.exists() else "is not a folder" if not path.is_dir()
            else f"holds neither {MANIFEST_FILE} nor {CONFIG_FILE} + {MODEL_FILE}")
    raise ValueError(f"{path}: {what}; expected a bundle folder ({MANIFEST_FILE}) or a run "
                     f"folder ({CONFIG_FILE} + {MODEL_FILE})")


def context_length(subject: Subject) -> int:
    return (subject.run.config.context_length if subject.manifest is None
            else subject.manifest["context_length"])


def profile_path(path, options: ProfileOptions = ProfileOptions(), *,
                 progress=lambda line: None) -> dict:
    """Profile a bundle or a run folder (see open_subject)."""
    return profile_subject(open_subject(path), options, progress=progress)


def profile_subject(subject: Subject, options: ProfileOptions = ProfileOptions(), *,
                    progress=lambda line: None) -> dict:
    """A bundle's measured rows, or a run folder's torch row; with a bundle's source run
    (or the run folder), its model takes the export's decode lowerings as a side effect
    (function-preserving: the graphs' own)."""
    if subject.manifest is not None:
        return _profile_bundle(subject, options, progress)
    return _profile_run(subject, options, progress)


def _profile_bundle(subject: Subject, options: ProfileOptions, progress) -> dict:
    """Measured rows per artifact, their energy (measured by RAPL, else estimated, and
    labelled), and predictions for options.targets (labelled predicted)."""
    bundle, manifest, run = subject.path, subject.manifest, subject.run
    host, targets = check_options(options, manifest["context_length"], "bundle")
    prompt, prompt_ids = _prompt(bundle / "tokenizer.json", options)
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
        label_energy(row, host, options)
    # after the torch row: this sets the graphs' lowerings on the run's model
    workloads = None if run is None else _workloads(run.model.eval(), options, manifest)
    onnx = next((r for r in rows if r["artifact"] == "onnx"), None)
    notes, predictions = [], []
    if workloads is None:
        notes.append(f"no torch row and no predictions: the source run "
                     f"{manifest['source']['path']} is gone or changed since the export")
    elif onnx is None or onnx["decode_ms_per_token"] is None:
        notes.append("no predictions: the bundle has no float ONNX decode graph to measure")
    else:
        predictions, notes = _predictions(workloads, onnx, host, targets, options)
    operators = None
    if onnx is not None:
        progress("profiling the decode graph's operators")
        operators = decode_breakdown(bundle, prompt_ids, options.new_tokens, options.threads)
    return _report(options, host, rows, workloads, predictions, notes, bundle=str(bundle),
                   target=manifest["target"], efficiency_basis="the float ONNX decode graph",
                   operators=operators)


def _profile_run(subject: Subject, options: ProfileOptions, progress) -> dict:
    """A run folder in eager PyTorch (its only form here): the torch row, its labelled
    energy, and predictions from its own timing and its model as it is (no lowering)."""
    run_dir, run = subject.path, subject.run
    host, targets = check_options(options, run.config.context_length, "run")
    _, prompt_ids = _prompt(run.tokenizer_path, options)
    progress("measuring torch (eager)")
    row = measure_torch(run, prompt_ids, options.new_tokens, options.runs, options.threads)
    label_energy(row, host, options)
    workloads = _workloads(run.model.eval(), options, None)
    notes = [f"{run_dir} is a run folder: only its torch (eager) row is measured, and the "
             f"predictions' host efficiency comes from torch eager, not from an exported "
             f"graph; export it and profile the bundle for onnxruntime and TFLite rows"]
    predictions = []
    if row["decode_ms_per_token"] is None:
        notes.append("no predictions: --new-tokens 1 times no decode step")
    else:
        predictions, calibrated_notes = _predictions(workloads, row, host, targets, options)
        notes += calibrated_notes
    progress("timing the decode step per part")
    operators = torch_decode_breakdown(run.model, prompt_ids, options.new_tokens,
                                       options.threads)
    return _report(options, host, [row], workloads, predictions, notes, bundle=None,
                   run=str(run_dir), target=None, efficiency_basis="torch eager",
                   operators=operators)
