"""The report's tables as (JSON records, markdown): core, ablation, scale, the width-matched
dense baseline, and the rows with their budget, time, hardware and commit."""

from __future__ import annotations

from qtf_edge.presets import PRESETS

from .card import CARD
from .figures import Results, energy, fmt, fmt_spread, ppl, ratio
from .plan import ABLATION, BUDGET_PROFILE, ENERGY_PROFILES, SIZES, tokens_per_step

# ---------------------------------------------------------------------------- report: tables

def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def core_table(results: Results) -> tuple[list[dict], str]:
    """Dense against QTF at small (d=128) and large (d=512), beside the card."""
    data, lines = [], []
    for size in ("small", "large"):
        dense, qtf = results.figures("core", size, "dense"), results.figures("core", size, "qtf")
        card_params = CARD["params"][size]
        entries = [
            ("total parameters", card_params["dense"], card_params["qtf"],
             dense.get("params"), qtf.get("params"), ",.0f"),
            ("weights MB (float32)", None, None, dense.get("weights_mb"), qtf.get("weights_mb"),
             ".2f"),
            ("validation word perplexity", CARD["perplexity"]["dense"] if size == "small" else None,
             (CARD["perplexity"]["qtf_low"], CARD["perplexity"]["qtf_high"]) if size == "small"
             else None, dense.get("perplexity_per_word"), qtf.get("perplexity_per_word"), ".1f"),
        ]
        for profile in ENERGY_PROFILES:
            card = CARD["energy_uj"][profile] if size == "small" else {}
            entries.append(((f"energy uJ per query, {profile} (estimated, "
                             f"{qtf.get('query_tokens', '?')} tokens)"), card.get("dense"),
                            card.get("qtf"), energy(dense, profile), energy(qtf, profile), ",.0f"))
            entries.append((f"energy uJ per decoded token, {profile} (estimated)", None, None,
                            (dense.get("energy_uj_per_decoded_token") or {}).get(profile),
                            (qtf.get("energy_uj_per_decoded_token") or {}).get(profile), ",.1f"))
        entries += [
            ("quantum path usage (routed to QKSAM)", None,
             CARD["quantum_path_usage"] if size == "small" else None, None,
             qtf.get("quantum_path_usage"), ".3f"),
            ("CPU decode ms per token (ONNX, 1 thread, measured)", None, None,
             dense.get("decode_ms"), qtf.get("decode_ms"), ".3f"),
            ("ONNX float graphs MB (prefill + decode)", None, None,
             latency_field(dense, "onnx_mb"), latency_field(qtf, "onnx_mb"), ".2f"),
            ("peak RSS MB while decoding (run.py, measured)", None, None,
             latency_field(dense, "peak_rss_mb"), latency_field(qtf, "peak_rss_mb"), ".1f"),
        ]
        for metric, card_dense, card_qtf, ours_dense, ours_qtf, spec in entries:
            if metric.startswith("CPU decode"):  # say where the weights were stand-ins
                ours_dense, ours_qtf = (latency_cell(f) for f in (dense, qtf))
            mean_dense, mean_qtf = (v["mean"] if isinstance(v, dict) else
                                    float(v.split()[0]) if isinstance(v, str) else v
                                    for v in (ours_dense, ours_qtf))
            card_ratio = (ratio(card_qtf, card_dense) if not isinstance(card_qtf, tuple)
                          else ratio(card_qtf[1], card_dense))
            if metric.startswith("CPU decode") and size == "small":
                card_ratio = CARD["cpu_latency_ratio"]
            record = {"size": size, "metric": metric, "card_dense": card_dense,
                      "card_qtf": card_qtf, "card_ratio": card_ratio, "dense": ours_dense,
                      "qtf": ours_qtf, "ratio": ratio(mean_qtf, mean_dense)}
            data.append(record)
            lines.append([size, metric, fmt_card(card_dense, spec), fmt_card(card_qtf, spec),
                          fmt(card_ratio, ".2f"), fmt_value(ours_dense, spec),
                          fmt_value(ours_qtf, spec), fmt(record["ratio"], ".2f")])
    header = ["size", "metric", "card dense", "card QTF", "card QTF/dense", "our dense",
              "our QTF", "our QTF/dense"]
    return data, markdown_table(header, lines)


def latency_field(figures: dict, key: str):
    return (figures.get("latency") or {}).get(key)


def latency_cell(figures: dict):
    """The decode ms, or a string saying it was timed on same-shape untrained weights."""
    value, latency = figures.get("decode_ms"), figures.get("latency") or {}
    if value is not None and latency.get("weights", "").startswith("untrained"):
        return f"{value:.3f} (untrained weights, same shape)"
    return value


def fmt_card(value, spec: str) -> str:
    if isinstance(value, tuple):
        return f"{format(value[0], spec)}-{format(value[1], spec)}"
    return fmt(value, spec, missing="not given")


def fmt_value(value, spec: str) -> str:
    if isinstance(value, str):
        return value
    return fmt_spread(value, spec) if isinstance(value, dict) else fmt(value, spec)


EFFICIENCY_DEFINITION = (
    "efficiency score = (E_dense / E_row) x (PPL_dense / PPL_row): the estimated energy "
    "saving factor (cpu_xeon, per query) times the share of the dense model's perplexity "
    "kept. The dense model scores 1; above 1, the row saves more energy than it loses in "
    "perplexity (both as factors). The card does not define its score; this is ours.")


def ablation_table(results: Results) -> tuple[list[dict], str]:
    dense = results.figures("core", "small", "dense")
    base_ppl, base_energy, base_ms = ppl(dense), energy(dense, BUDGET_PROFILE), dense.get("decode_ms")
    entries = [("dense", "core", "dense")]
    entries += [(label, "core" if variant == "daruan" else "ablation",
                 "qtf" if variant == "daruan" else variant) for variant, label, _ in ABLATION]
    data, lines = [], []
    for label, group, variant in entries:
        f = results.figures(group, "small", variant)
        row_ppl, row_energy = ppl(f), energy(f, BUDGET_PROFILE)
        score = (ratio(base_energy, row_energy) * ratio(base_ppl, row_ppl)
                 if None not in (base_energy, row_energy, base_ppl, row_ppl) else None)
        record = {"row": label, "rows": f["rows"], "params": f.get("params"),
                  "perplexity_per_word": f.get("perplexity_per_word"),
                  "perplexity_delta": delta(row_ppl, base_ppl),
                  "energy_uj_per_query": row_energy, "energy_delta": delta(row_energy, base_energy),
                  "decode_ms": f.get("decode_ms"), "latency_delta": delta(f.get("decode_ms"), base_ms),
                  "quantum_path_usage": f.get("quantum_path_usage"), "efficiency_score": score,
                  "budget": f.get("budget"), "budget_error": f.get("budget_error"),
                  "status": results.status(group, "small", variant)}
        data.append(record)
        lines.append([label, fmt(record["params"], ",.0f"),
                      fmt_spread(record["perplexity_per_word"]), fmt_pct(record["perplexity_delta"]),
                      fmt(row_energy, ",.0f"), fmt_pct(record["energy_delta"]),
                      fmt(record["decode_ms"], ".3f"), fmt_pct(record["latency_delta"]),
                      fmt(score, ".2f"), quantum_cell(variant, record["quantum_path_usage"]),
                      ablation_note(results, group, variant, f)])
    header = ["row", "params", "val ppl/word", "Δ ppl", "est. uJ/query cpu_xeon", "Δ energy",
              "decode ms (CPU)", "Δ latency", "efficiency score", "quantum path", "note"]
    return data, markdown_table(header, lines)


def quantum_cell(variant: str, usage: dict | None) -> str:
    """The routed share; QKSAM without the router takes every token by construction."""
    if usage is None and variant == "qksam":
        return "all (no router)"
    return fmt_spread(usage, ".2f")


def ablation_note(results: Results, group: str, variant: str, figures: dict) -> str:
    """What happened to a row besides its figures: not finished, refused or rounded by
    its budget, latency not measured."""
    notes = []
    names = results.row_names(group, "small", variant)
    rows = [results.rows.get(n) or {} for n in names]
    done = sum(r.get("status") == "done" for r in rows)
    if done < len(rows):
        others = sorted({r.get("status", "not trained") for r in rows} - {"done"})
        errors = sorted({r["error"] for r in rows if r.get("error")})
        notes.append(f"{done} of {len(rows)} seeds done ({', '.join(others)}"
                     + (f": {'; '.join(errors)}" if errors else "") + ")")
    budget = figures.get("budget")
    if budget and budget.get("final"):
        final = budget["final"]
        ranks = [r["max_rank"] for r in budget["rounds"]]
        limits = ", ".join(f"{k} <= {v:,.0f}" for k, v in final["limits"].items())
        notes.append(f"budget {limits} (estimated) {'met' if final['met'] else 'NOT met'}"
                     + (f", TT ranks rounded to <= {min(ranks)}" if ranks else ""))
    latency = figures.get("latency") or {}
    if "error" in latency:
        notes.append(f"latency: {latency['error']}")
    elif latency.get("weights", "").startswith("untrained"):
        notes.append("latency on untrained weights of the same shape")
    return "; ".join(notes) or "-"


def delta(value, base):
    return None if value is None or base in (None, 0) else value / base - 1


def fmt_pct(value) -> str:
    return "-" if value is None else f"{value:+.1%}"


def scale_sources(size: str) -> tuple[str, str]:
    """The group holding a size's dense and QTF rows: core for small and large."""
    return ("core", "core") if size in ("small", "large") else ("scale", "scale")


def scale_table(results: Results) -> tuple[list[dict], str]:
    data, lines = [], []
    for size in SIZES:
        group, _ = scale_sources(size)
        dense, qtf = results.figures(group, size, "dense"), results.figures(group, size, "qtf")
        fields = {**PRESETS[size][0], **next(r.model for r in results.plan if r.size == size
                                              and r.group == group)}
        card = CARD["params"].get(size, {})
        record = {"size": size, "d_model": fields["d_model"], "n_layers": fields["n_layers"],
                  "card_d_model_layers": CARD["scale"][size],
                  "dense_params": dense.get("params"), "qtf_params": qtf.get("params"),
                  "compression": ratio(dense.get("params"), qtf.get("params")),
                  "card_compression": ratio(card.get("dense"), card.get("qtf")),
                  "dense_mb": dense.get("weights_mb"), "qtf_mb": qtf.get("weights_mb"),
                  "dense_ppl": dense.get("perplexity_per_word"),
                  "qtf_ppl": qtf.get("perplexity_per_word"),
                  "training": qtf.get("training") or dense.get("training"),
                  "status": f"dense {results.status(group, size, 'dense')}; "
                            f"QTF {results.status(group, size, 'qtf')}"}
        data.append(record)
        t = record["training"]
        lines.append([size, f"{fields['d_model']} / {fields['n_layers']}",
                      fmt(record["dense_params"], ",.0f"), fmt(record["qtf_params"], ",.0f"),
                      fmt(record["compression"], ".2f"), fmt(record["card_compression"], ".2f",
                                                             "not given"),
                      fmt(record["dense_mb"], ".2f"), fmt(record["qtf_mb"], ".2f"),
                      fmt_spread(record["dense_ppl"]), fmt_spread(record["qtf_ppl"]),
                      f"{t['steps']} x {t['batch_size']} x {t['context_length']}" if t else "-",
                      fmt(t and t["tokens_seen"], ",d")])
    header = ["size", "d / layers", "dense params", "QTF params", "compression",
              "card compression", "dense MB", "QTF MB", "dense ppl/word", "QTF ppl/word",
              "steps x batch x context", "tokens"]
    return data, markdown_table(header, lines)


def baseline_table(results: Results) -> tuple[list[dict], str]:
    data, lines = [], []
    for size in SIZES:
        group, _ = scale_sources(size)
        qtf, dense = results.figures(group, size, "qtf"), results.figures(group, size, "dense")
        variant = next(r.variant for r in results.plan if r.group == "baseline" and r.size == size)
        narrow = results.figures("baseline", size, variant)
        verdict = baseline_verdict(qtf.get("perplexity_per_word"),
                                   narrow.get("perplexity_per_word"))
        record = {"size": size, "qtf_params": qtf.get("params"), "qtf_ppl": qtf.get(
            "perplexity_per_word"), "baseline": variant, "baseline_params": narrow.get("params"),
                  "baseline_ppl": narrow.get("perplexity_per_word"),
                  "dense_ppl": dense.get("perplexity_per_word"),
                  "qtf_over_baseline": ratio(ppl(qtf), ppl(narrow)), "verdict": verdict}
        data.append(record)
        lines.append([size, fmt(record["qtf_params"], ",.0f"), fmt_spread(record["qtf_ppl"]),
                      variant, fmt(record["baseline_params"], ",.0f"),
                      fmt_spread(record["baseline_ppl"]), fmt_spread(record["dense_ppl"]),
                      fmt(record["qtf_over_baseline"], ".3f"), verdict])
    header = ["size", "QTF params", "QTF ppl/word", "width-matched dense", "its params",
              "its ppl/word", "full dense ppl/word", "QTF / matched", "TT beats a smaller dense?"]
    return data, markdown_table(header, lines)


def baseline_verdict(qtf: dict | None, narrow: dict | None) -> str:
    """Yes or no by the means; 'within the seed spread' when the ranges of the seeds overlap."""
    if not qtf or not narrow:
        return "not measured yet"
    better = qtf["mean"] < narrow["mean"]
    if qtf["n"] > 1 and narrow["n"] > 1 and qtf["min"] <= narrow["max"] \
            and narrow["min"] <= qtf["max"]:
        return f"{'yes' if better else 'no'}, within the seed spread"
    return "yes" if better else "no"


# ---------------------------------------------------------------------------- report: runs

def runs_table(results: Results) -> tuple[list[dict], str]:
    """Per row: status, the training budget, time, hardware, commit and command."""
    data, lines = [], []
    for row in results.plan:
        result = results.rows.get(row.name)
        sessions = (result or {}).get("sessions", [])
        training = (result or {}).get("training") or {}
        record = {"row": row.name, "status": (result or {}).get("status", "not trained"),
                  "steps": training.get("steps"), "planned_steps": row.train["steps"],
                  "batch_size": row.train["batch_size"], "tokens_seen": training.get("tokens_seen"),
                  "train_s": training.get("elapsed_s"), "tokens_per_s": training.get("tokens_per_s"),
                  "hardware": sorted({s["hardware"] for s in sessions}),
                  "commits": sorted({s["commit"] for s in sessions}),
                  "commands": list(dict.fromkeys(s["command"] for s in sessions)),
                  "error": (result or {}).get("error")}
        data.append(record)
        lines.append([row.name, record["status"], f"{fmt(record['steps'], ',d')} / {row.train['steps']:,}",
                      f"{row.train['batch_size']} x {tokens_per_step(row) // row.train['batch_size']}",
                      fmt(record["tokens_seen"], ",d"), fmt(record["train_s"], ".1f"),
                      fmt(record["tokens_per_s"], ",.0f"),
                      "; ".join(record["hardware"]) or "-", "; ".join(c[:12] for c in
                                                                     record["commits"]) or "-"])
    header = ["row", "status", "steps (done / planned)", "batch x context", "tokens", "train s",
              "tok/s", "hardware", "commit"]
    commands: dict[str, list[str]] = {}
    for record in data:
        for command in record["commands"]:
            commands.setdefault(command, []).append(record["row"])
    listing = "\n".join(f"- `{command}`: {len(rows)} row(s)" for command, rows in commands.items())
    return data, (markdown_table(header, lines) + "\n\nCommands that trained these rows (each "
                  "row's sessions, resumes included, are in reference_runs.json):\n\n"
                  + (listing or "- none yet"))
