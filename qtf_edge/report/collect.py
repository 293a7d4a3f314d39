"""Gather what `qtf-edge report` shows, for a run folder or a bundle, as one JSON-ready
document plus its plots (PNG bytes).

Sections: the model card (parameters, size, perplexity on --data, compression against the
dense model of the same shape), the Pareto frontier of the training evaluations (the run's
or, for a derived run, its nearest ancestor's), decode latency per model part (measured:
onnxruntime's profiler on a bundle's decode graph, forward hooks on a run in eager
PyTorch), per-token entanglement entropy and routing on a sample sentence, energy per
query on every shipped profile (cost model, labelled estimated) and on this machine
(measured by RAPL where readable, else estimated from the measured time), and the
bundle's manifest or the run's lineage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from qtf_edge.data import default_corpus, load_tokenizer, read_corpus
from qtf_edge.evaluate import evaluate_text, per_token_trace
from qtf_edge.export.bundle import MANIFEST_FILE
from qtf_edge.pareto import frontier_of_run, plot_png
from qtf_edge.profile.pipeline import (
    ProfileOptions,
    Subject,
    check_options,
    context_length,
    open_subject,
    profile_subject,
)
from qtf_edge.profile.predict import ESTIMATED, MEASURED
from qtf_edge.report import plots
from qtf_edge.run_info import QUERY_TOKENS, describe_run
from qtf_edge.runs import LINEAGE_FILE, METRICS_FILE, MODEL_FILE, RunError, read_lineage

HEATMAP_TOKENS = 40   # tokens of the sample sentence drawn (a readable width)
ANCESTRY_LIMIT = 16   # lineage hops searched for training evaluations
QUANTUM_NOTE = ("'Quantum' parts are exact classical simulations of a few qubits run on "
                "this CPU; nothing here ran on quantum hardware.")


RUNS = 5  # generations per artifact: the report shows medians, not a benchmark


@dataclass(frozen=True)
class ReportOptions:
    measure: ProfileOptions = ProfileOptions(runs=RUNS)  # as qtf-edge profile's; its data
    # (default: the shipped valid excerpt) also gives the perplexity and the sample sentence
    text: str | None = None       # the sample sentence (default: sample_sentence(data))
    max_tokens: int = 8192        # tokens of the data evaluated


def _subject(path) -> Subject:
    """The bundle or run folder, with the run the report reads its model from."""
    subject = open_subject(path)
    if subject.run is None:
        raise ValueError(f"{subject.path}: its source run {subject.manifest['source']['path']} "
                         f"is gone or changed since the export; the report needs it for the "
                         f"model card and the routing trace")
    return subject


def _data_lines(options: ReportOptions) -> tuple[str, list[str]]:
    data = options.measure.data
    source = data if data is not None else str(default_corpus("valid"))
    try:
        return source, read_corpus(source)
    except ValueError as error:
        raise ValueError(f"--data: {error}") from None


def model_card(run, described: dict, tokenizer, data: str, lines: list[str],
               options: ReportOptions, manifest: dict | None) -> dict:
    result = evaluate_text(run.model, tokenizer, lines, max_tokens=options.max_tokens)
    card = {key: described[key] for key in ("architecture", "form", "params", "dense_params",
                                            "compression_ratio", "flops", "tt_ranks")}
    card.update(run=str(run.path), model_mb=(run.path / MODEL_FILE).stat().st_size / 1e6,
                config=run.config.to_dict(), data=data, evaluation=result.to_dict())
    if manifest is not None:
        sizes = {f["path"]: f["bytes"] for f in manifest["files"]}
        card["graphs"] = {name: {"file": graph["file"], "mb": sizes[graph["file"]] / 1e6}
                          for name, graph in manifest["graphs"].items()}
    return card


def _ancestry(run_path: Path):
    """The run folder, then its parent, grandparent... as lineage.json records them."""
    path = run_path
    for _ in range(ANCESTRY_LIMIT):
        yield path
        try:
            parent = (read_lineage(path).get("parent") or {}).get("path")
        except RunError:
            return
        if not parent or not Path(parent).is_dir():
            return
        path = Path(parent)


def pareto_section(run_path: Path) -> tuple[dict, bytes | None]:
    for path in _ancestry(run_path):
        if not (path / METRICS_FILE).is_file():
            continue
        try:
            points, frontier = frontier_of_run(path)
        except RunError:
            continue
        title = f"{path.name}: validation perplexity vs cost (latency and energy estimated)"
        section = {"run": str(path), "own": path == run_path, "points": points,
                   "frontier": frontier}
        return section, plot_png(points, frontier, title)
    return {"run": None, "note": f"no training evaluations ({METRICS_FILE} with eval "
                                 f"records) in {run_path} or the runs it derives from"}, None


def sample_sentence(lines: list[str]) -> str:
    """The data's first line long enough to fill the heat map (WikiText's first lines are
    "= Title =" headings), else its longest line."""
    return next((line for line in lines if len(line.split()) >= HEATMAP_TOKENS),
                max(lines, key=len))


def latency_section(subject: Subject, options: ReportOptions, progress) -> dict:
    """`qtf-edge profile`'s measurements: the rows per artifact (a run: torch eager; a
    bundle: each graph through its run.py), decode time per part, predictions."""
    profiled = profile_subject(subject, options.measure, progress=progress)
    return {key: profiled[key] for key in ("measured", "predictions", "notes",
                                           "decode_context", "query")} | {
        "breakdown": profiled["operators"]}


def routing_section(run, tokenizer, text: str) -> tuple[dict, bytes | None]:
    trace = per_token_trace(run.model, tokenizer, text)[:HEATMAP_TOKENS]
    if not trace[0]["blocks"]:
        return {"text": text, "note": "dense model: no quantum encoder and no routing; "
                                      "every token takes classical attention"}, None
    routes = [b["route"] for t in trace for b in t["blocks"] if b["route"] is not None]
    section = {"text": "".join(t["text"] for t in trace), "tokens": trace,
               "quantum_share": (routes.count("quantum") / len(routes)) if routes else None}
    png = plots.routing_heatmap(trace, "entropy per token and block; red boxes: routed to "
                                       "quantum-kernel attention")
    return section, png


def energy_section(run, described: dict, latency: dict) -> dict:
    """Energy per query (profile's: the prompt's prefill, then new_tokens - 1 decode
    steps) on this machine, measured or estimated per artifact, and predicted on each
    target; per decoded token likewise; and, from the cost model alone, one forward pass
    over QUERY_TOKENS tokens on every shipped profile (estimated). Every row has a label."""
    per_query, per_token = [], []
    for row in latency["measured"]:
        energy = row["energy"]
        if energy.get("label") not in (MEASURED, ESTIMATED):
            continue  # no decode step timed: nothing to label
        where = f"this machine, {row['artifact']}"
        basis = energy.get("method") or energy.get("source")
        per_query.append({"profile": where, "label": energy["label"],
                          "energy_uj": energy["per_query"]["energy_uj"],
                          "co2_g": energy["per_query"]["co2_g"], "basis": basis})
        per_token.append({"profile": where, "label": energy["label"],
                          "energy_uj": energy["energy_uj"], "co2_g": energy["co2_g"],
                          "basis": basis})
    for p in latency["predictions"]:
        basis = f"roofline / efficiency ({p.get('efficiency_from', 'host')})"
        per_query.append({"profile": p["profile"], "label": p["label"],
                          "energy_uj": p["query"]["energy_uj"], "co2_g": p["query"]["co2_g"],
                          "basis": f"{basis}; {p['query']['covers']}"})
        per_token.append({"profile": p["profile"], "label": p["label"],
                          "energy_uj": p["energy_uj"], "co2_g": p["co2_g"], "basis": basis})
    forward = [{"profile": name, "label": estimate["label"],
                "energy_uj": estimate["per_query"]["energy_uj"],
                "co2_g": estimate["per_query"]["co2_g"],
                "latency_ms": estimate["per_query"]["latency_ms"],
                "basis": "cost model: FLOPs and bytes x the profile's rates"}
               for name, estimate in described["estimates"].items()]
    return {"query": latency["query"], "per_query": per_query, "per_decoded_token": per_token,
            "forward_tokens": min(QUERY_TOKENS, run.config.context_length),
            "cost_model_forward": forward}


def manifest_section(subject: Subject) -> dict:
    manifest, run = subject.manifest, subject.run
    if manifest is not None:
        return {"kind": "bundle", "file": str(subject.path / MANIFEST_FILE),
                **{key: manifest.get(key) for key in ("target", "runtime", "created", "format",
                                                      "format_version", "source", "tools",
                                                      "compiler_command", "validation")},
                "files": manifest["files"]}
    lineage = run.lineage
    return {"kind": "run", "file": str(run.path / LINEAGE_FILE),
            "command": lineage.get("command"), "created": lineage.get("created_utc"),
            "package_version": lineage.get("package_version"),
            "parent": lineage.get("parent"),
            "files": [{"path": name, **entry} for name, entry in
                      sorted(lineage.get("files", {}).items())]}


def build_report(path, options: ReportOptions = ReportOptions(), *,
                 progress=lambda line: None) -> tuple[dict, dict[str, bytes]]:
    """(the report document, {figure name: PNG bytes})."""
    subject = _subject(path)
    run, manifest = subject.run, subject.manifest
    check_options(options.measure, context_length(subject),
                  "bundle" if manifest else "run")  # before any work
    tokenizer = load_tokenizer(run.tokenizer_path)
    data, lines = _data_lines(options)
    text = options.text if options.text is not None else sample_sentence(lines)
    if not text.strip():
        raise ValueError("--text is empty: expected a sentence to trace")
    progress(f"evaluating {run.path} on {data}")
    # The model as trained, before profiling sets the export's decode lowerings on it.
    described = describe_run(run)
    card = model_card(run, described, tokenizer, data, lines, options, manifest)
    routing, routing_png = routing_section(run, tokenizer, text)
    pareto, pareto_png = pareto_section(run.path)
    latency = latency_section(subject, options, progress)
    energy = energy_section(run, described, latency)
    figures = {"pareto": pareto_png, "routing": routing_png}
    if latency["breakdown"] is not None:
        figures["latency"] = plots.latency_bars(
            latency["breakdown"], f"decode step by model part, measured "
                                  f"({latency['breakdown']['graph']}, "
                                  f"{latency['breakdown']['threads']} thread(s))")
    query = energy["query"]
    figures["energy"] = plots.energy_bars(
        energy["per_query"], f"energy per query ({query['prompt_tokens']}-token prompt, "
                             f"{query['new_tokens']} new tokens)")
    doc = {"subject": {"kind": "bundle" if manifest else "run", "path": str(subject.path),
                       "run": str(run.path)},
           "note": QUANTUM_NOTE, "options": asdict(options),
           "model_card": card, "pareto": pareto, "latency": latency, "routing": routing,
           "energy": energy, "manifest": manifest_section(subject)}
    return doc, {name: png for name, png in figures.items() if png is not None}
