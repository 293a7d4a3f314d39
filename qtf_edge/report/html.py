"""The report as one self-contained HTML file: inline CSS, plots as base64 PNG data URIs,
no script and no external resource, so it opens offline in any browser."""

from __future__ import annotations

import base64
import html
import json

from qtf_edge.cli.tables import number
from qtf_edge.evaluate import visible_text

SECTIONS = (("model-card", "Model card"), ("pareto", "Pareto frontier"),
            ("latency", "Latency by model part"), ("routing", "Entropy and routing"),
            ("energy", "Energy per query"), ("manifest", "Manifest"))

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em;
       color: #1b1b1b; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
th.text { text-align: left; }
td.text { text-align: left; font-family: ui-monospace, monospace; font-size: 12px; }
img { max-width: 100%; display: block; margin: .5em 0; }
.note { color: #555; font-style: italic; }
.label { font-weight: 600; }
nav a { margin-right: 1em; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _cell(value) -> str:
    if isinstance(value, float):
        return _e(number(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return _e(f"{value:,}")
    return _e("-" if value is None else value)


def table(headers: list[str], rows: list[list], text_columns: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th class=\"text\">{_e(h)}</th>" if i in text_columns else
                   f"<th>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(
        f"<td class=\"text\">{_cell(v)}</td>" if i in text_columns else f"<td>{_cell(v)}</td>"
        for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _model_card(card: dict) -> str:
    evaluation = card["evaluation"]
    routed = evaluation.get("routed_fraction")
    rows = [["architecture", card["architecture"]], ["form", card["form"]],
            ["parameters", card["params"]["total"]],
            ["dense model of the same shape", card["dense_params"]],
            ["compression vs dense", f"{card['compression_ratio']:.2f}x"],
            ["model file", f"{card['model_mb']:.3f} MB"],
            ["perplexity per token", evaluation["perplexity_per_token"]],
            ["perplexity per word", evaluation["perplexity_per_word"]],
            ["bits per byte", evaluation["bits_per_byte"]],
            ["evaluated on", f"{card['data']} ({evaluation['tokens']:,} tokens)"],
            ["tokens routed to quantum-kernel attention",
             "- (no router)" if routed is None else f"{routed:.1%}"],
            ["FLOPs per decoded token", card["flops"]["per_decoded_token"]]]
    parts = [[part, count] for part, count in card["params"].items()]
    out = [table(["", "value"], rows), "<h3>Parameters by part</h3>",
           table(["part", "parameters"], parts)]
    if "graphs" in card:
        out += ["<h3>Exported graphs</h3>", table(["graph", "file", "MB"], [
            [name, g["file"], g["mb"]] for name, g in card["graphs"].items()])]
    config = card["config"]
    out.append(note("config: " + ", ".join(f"{k}={v}" for k, v in config.items()
                                           if not isinstance(v, (dict, list)))))
    return "".join(out)


def _pareto(section: dict, png: bytes | None) -> str:
    if section.get("run") is None:
        return note(section["note"])
    where = "this run" if section["own"] else f"the run it derives from, {section['run']}"
    rows = [[p["step"], p["val_perplexity_per_word"], p["params"], p["latency_ms"],
             p["energy_uj"]] for p in section["frontier"]]
    return "".join([
        f"<p>Training evaluations of {_e(where)}: {len(section['points'])} points, "
        f"{len(section['frontier'])} on the frontier. Latency and energy are "
        f'<span class="label">estimated</span> by the cost model.</p>',
        image(png, "Pareto frontier: perplexity against parameters and estimated energy"),
        table(["step", "perplexity per word", "parameters", "estimated latency ms",
               "estimated energy uJ"], rows)])


def _ms(stats: dict | None, key: str) -> float | None:
    return None if not stats else stats.get(key)


def _latency(section: dict, png: bytes | None) -> str:
    out = []
    breakdown = section["breakdown"]
    if breakdown is not None:
        out += [f"<p>Measured on this machine: {_e(breakdown['graph'])}, "
                f"{breakdown['steps']} decode steps, {breakdown['threads']} thread(s), "
                f"{breakdown['ms_per_step']:.3f} ms per step.</p>",
                image(png, "decode latency by model part"),
                table(["part", "ms per step", "share"], [
                    [part, row["ms_per_step"], f"{row['share']:.1%}"]
                    for part, row in breakdown["parts"].items()])]
    rows = [[r["artifact"], r.get("runtime"), _ms(r.get("prefill_ms"), "median"),
             _ms(r.get("decode_ms_per_token"), "median"),
             _ms(r.get("decode_ms_per_token"), "p90"), r.get("tokens_per_s"),
             r.get("peak_rss_mb")] for r in section["measured"]]
    out += ["<h3>Measured on this machine</h3>",
            table(["artifact", "runtime", "prefill ms", "decode ms/token (median)",
                   "decode ms/token (p90)", "tokens/s", "peak RSS MiB"], rows)]
    if section["predictions"]:
        out += [f"<h3>Predicted on other devices (decode step at "
                f"{section['decode_context']} tokens of context)</h3>",
                table(["profile", "label", "ms/token", "tokens/s", "bound",
                       "host efficiency"], [
                    [p["profile"], p["label"], p["latency_ms"], p["tokens_per_s"], p["bound"],
                     f"{p['host_efficiency']:.1%}"] for p in section["predictions"]])]
    out += [note(n) for n in section["notes"]]
    return "".join(out)


def _routing(section: dict, png: bytes | None) -> str:
    if "tokens" not in section:
        return note(section["note"])
    share = section["quantum_share"]
    rows = []
    for token in section["tokens"]:
        for block in token["blocks"]:
            rows.append([token["position"], visible_text(token["text"]), block["block"],
                         block["entropy"], block["hardness"], block["route"], block["rank"]])
    return "".join([
        f"<p>Sample: <code>{_e(section['text'])}</code></p>",
        f"<p>Share of (token, block) pairs routed to quantum-kernel attention: "
        f"{'-' if share is None else f'{share:.1%}'}.</p>",
        image(png, "entropy and routing heat map"),
        "<details><summary>per token and block</summary>",
        table(["position", "token", "block", "entropy S (nats)", "hardness S/S_max",
               "route", "FFN TT rank"], rows, text_columns=(1,)),
        "</details>"])


def _energy(section: dict, png: bytes | None) -> str:
    query = section["query"]
    rows = [[r["profile"], r["label"], r["energy_uj"], r["co2_g"], r["basis"]]
            for r in section["per_query"]]
    token = [[r["profile"], r["label"], r["energy_uj"], r["co2_g"], r["basis"]]
             for r in section["per_decoded_token"]]
    forward = [[r["profile"], r["label"], r["energy_uj"], r["co2_g"], r["latency_ms"]]
               for r in section["cost_model_forward"]]
    return "".join([
        f"<p>A query is one generation: the prefill of a {query['prompt_tokens']}-token "
        f"prompt, then {query['decode_steps']} decode steps. Every figure is labelled: "
        f'<span class="label">measured</span> (RAPL counters), '
        f'<span class="label">estimated</span> (a hardware profile\'s power or rates) or '
        f'<span class="label">predicted</span> (a roofline divided by a measured '
        f"efficiency).</p>",
        image(png, "energy per query per profile"),
        table(["where", "label", "uJ per query", "g CO2 per query", "basis"], rows,
              text_columns=(4,)),
        "<h3>Per decoded token</h3>",
        table(["where", "label", "uJ per token", "g CO2 per token", "basis"], token,
              text_columns=(4,)),
        f"<h3>Cost model: one forward pass over {section['forward_tokens']} tokens</h3>",
        note("FLOPs and bytes times each shipped profile's datasheet rates; no measurement "
             "enters these."),
        table(["profile", "label", "uJ per forward", "g CO2 per forward", "ms per forward"],
              forward)])


def _manifest(section: dict) -> str:
    keys = [k for k in section if k not in ("files", "validation")]
    out = [table(["", "value"], [[k, json.dumps(section[k]) if isinstance(section[k], dict)
                                  else section[k]] for k in keys], text_columns=(1,)),
           table(["file", "bytes", "sha256"], [[f["path"], f["bytes"], f["sha256"]]
                                               for f in section["files"]], text_columns=(2,))]
    if section.get("validation"):
        rows = [[kind, graph, v.get("perplexity"), v.get("top1_agreement"),
                 v.get("max_abs_diff")] for kind, graphs in section["validation"].items()
                for graph, v in graphs.items()]
        out += ["<h3>Validation against torch</h3>",
                table(["artifact", "graph", "perplexity per token", "top-1 agreement",
                       "max |logit diff|"], rows)]
    return "".join(out)


def render_html(doc: dict, figures: dict[str, bytes]) -> str:
    bodies = {"model-card": _model_card(doc["model_card"]),
              "pareto": _pareto(doc["pareto"], figures.get("pareto")),
              "latency": _latency(doc["latency"], figures.get("latency")),
              "routing": _routing(doc["routing"], figures.get("routing")),
              "energy": _energy(doc["energy"], figures.get("energy")),
              "manifest": _manifest(doc["manifest"])}
    subject = doc["subject"]
    nav = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title in SECTIONS)
    sections = "".join(f'<section id="{key}"><h2>{_e(title)}</h2>{bodies[key]}</section>'
                       for key, title in SECTIONS)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>qtf-edge report: {_e(subject['path'])}</title><style>{STYLE}</style>"
            f"</head><body><h1>qtf-edge report: {_e(subject['path'])}</h1>"
            f"<p>{_e(subject['kind'])} {_e(subject['path'])}; model from "
            f"{_e(subject['run'])}.</p>{note(doc['note'])}<nav>{nav}</nav>{sections}"
            f"</body></html>\n")
