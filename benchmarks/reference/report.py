"""--report: the JSON files, the plots and the generated blocks of REFERENCE.md (between
its reference_tables.py markers), and every table printed."""

from __future__ import annotations

from pathlib import Path

from qtf_edge.atomic import write_json_atomic, write_text_atomic

from .card import CARD
from .figures import Results
from .plan import REPO, Layout, Row, utc_now
from .plots import write_plots
from .tables import (
    EFFICIENCY_DEFINITION,
    ablation_table,
    baseline_table,
    core_table,
    markdown_table,
    runs_table,
    scale_table,
)
from .verdicts import claims, width_label

# ---------------------------------------------------------------------------- report: outputs

MARKER = "<!-- reference_tables.py: {} {} -->"
GENERATED_BLOCKS = ("summary", "claims", "core", "ablation", "scale", "baseline", "runs")


def replace_block(text: str, name: str, body: str) -> str:
    begin, end = MARKER.format("BEGIN", name), MARKER.format("END", name)
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise SystemExit(f"error: REFERENCE.md lacks the markers of the {name!r} block "
                         f"({begin} ... {end}); restore them from git")
    return text[:start + len(begin)] + "\n" + body.strip() + "\n" + text[stop:]


def summary_block(results: Results, meta: dict) -> str:
    hardware_seen = sorted({s["hardware"] for r in results.rows.values() if r
                            for s in r.get("sessions", [])})
    hosts = sorted({v.get("host") for v in results.latency.values() if v and v.get("host")})
    finished = sum(1 for r in results.rows.values() if r and r.get("status") == "done")
    return "\n".join([
        (f"Generated {utc_now()} by `python benchmarks/reference_tables.py --report` from "
         f"{finished} of {len(results.plan)} rows."),
        "",
        (f"- Data: `{shown_path(meta['data']['train'])}` (sha256 of its lines "
         f"{meta.get('train_sha256', '?')[:12]}) and `{shown_path(meta['data']['valid'])}`; "
         f"word perplexity on {evaluated(results, meta.get('quick'))} of the validation text."),
        (f"- Tokenizer: one byte-level BPE of {meta['vocab_size']} tokens for every row, sha256 "
         f"{meta.get('tokenizer_sha256', '?')[:16]}."),
        f"- Training hardware: {'; '.join(hardware_seen) or 'none yet'}.",
        f"- Latency host: {'; '.join(hosts) or 'none yet'}; {latency_settings(results)}.",
        f"- Plan commit: {meta.get('commit')}; plan command: `{meta.get('command')}`.",
    ])


def latency_settings(results: Results) -> str:
    """How the bundles were timed, from the latency records themselves."""
    records = [v for v in results.latency.values() if v and "decode_ms" in v]
    if not records:
        return "no bundle timed yet"
    first = records[0]
    return (f"run.py --bench, ONNX Runtime, {first.get('threads', 1)} thread, prompt of "
            f"{first['prompt_tokens']} tokens, {first['new_tokens']} new tokens x "
            f"{first['runs']} generations, median of {first.get('rounds_n', 1)} interleaved "
            f"round(s)")


def shown_path(path: str) -> str:
    """A data path relative to the repository (or its parent) where it lies there."""
    for base in (REPO, REPO.parent):
        try:
            return str(Path(path).resolve().relative_to(base))
        except ValueError:
            continue
    return path


def evaluated(results: Results, quick: bool) -> str:
    """Which validation tokens the perplexities are over (--quick caps them)."""
    counts = " / ".join(f"{t:,}" for t in sorted(results.evaluated_tokens())) or "?"
    return f"the first {counts} tokens" if quick else f"all ({counts} tokens)"


def claims_block(claim_rows: list[dict]) -> str:
    return markdown_table(["claim", "card", "ours", "verdict", "why"],
                          [[c["claim"], c["card"], c["ours"], f"**{c['verdict']}**", c["why"]]
                           for c in claim_rows])


def report_outputs(args, layout: Layout, quick: bool) -> tuple[Path, Path]:
    """(folder for JSON and plots, REFERENCE.md to fill). A quick plan's report goes under
    its runs folder, a REFERENCE.md filled from the committed skeleton included: quick
    figures never reach benchmarks/, whatever the flags."""
    if quick:
        return layout.root / "report", layout.root / "report" / "REFERENCE.md"
    return Path(args.results_dir), Path(args.reference_md)


def check_one_tokenizer(results: Results, meta: dict) -> None:
    mismatched = {r["tokenizer_sha256"] for r in results.rows.values()
                  if r and r.get("status") == "done"} - {meta.get("tokenizer_sha256")}
    if mismatched:
        raise SystemExit(f"error: rows trained with another tokenizer ({', '.join(mismatched)}); "
                         f"the tables would not be comparable")


def write_reference_md(path: Path, blocks: dict[str, str]) -> None:
    """Fill the generated blocks of REFERENCE.md (the committed skeleton when the file is
    not there yet); the text around them is kept as it is."""
    template = path if path.is_file() else REPO / "benchmarks" / "REFERENCE.md"
    text = template.read_text(encoding="utf-8")
    for name in GENERATED_BLOCKS:
        text = replace_block(text, name, blocks[name])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def report_mode(args, layout: Layout, plan: list[Row], meta: dict) -> None:
    results = Results(layout, plan)
    check_one_tokenizer(results, meta)
    tables = {"core": core_table(results), "ablation": ablation_table(results),
              "scale": scale_table(results), "baseline": baseline_table(results),
              "runs": runs_table(results)}
    claim_rows = claims(results)
    quick = bool(meta.get("quick"))
    out, reference_md = report_outputs(args, layout, quick)
    out.mkdir(parents=True, exist_ok=True)
    header = {"generated_utc": utc_now(), "card": CARD, "plan_commit": meta.get("commit"),
              "plan_command": meta.get("command"), "tokenizer_sha256": meta.get("tokenizer_sha256"),
              "vocab_size": meta["vocab_size"], "data": meta["data"], "quick": quick,
              "efficiency_score": EFFICIENCY_DEFINITION}
    if quick:
        write_json_atomic(out / "reference_quick.json",
                          {**header, "claims": claim_rows,
                           **{name: data for name, (data, _) in tables.items()}})
    else:
        for name, (data, _) in tables.items():
            write_json_atomic(out / f"reference_{name}.json", {**header, "rows": data})
        write_json_atomic(out / "reference_claims.json", {**header, "rows": claim_rows})
    plots = write_plots(results, out)
    blocks = {"summary": summary_block(results, meta), "claims": claims_block(claim_rows),
              **{name: markdown for name, (_, markdown) in tables.items()}}
    write_reference_md(reference_md, blocks)
    titles = {"summary": "Setup", "claims": "Claims and verdicts",
              "core": f"Core metrics (small {width_label(results, 'small')}, large "
                      f"{width_label(results, 'large')})",
              "ablation": f"Ablation (small, {width_label(results, 'small')})",
              "scale": "Scale-up",
              "baseline": "Honest baseline: dense shrunk by width to QTF's parameters",
              "runs": "Rows: budget, time, hardware, commit"}
    for name in GENERATED_BLOCKS:
        print(f"\n## {titles[name]}\n\n{blocks[name]}")
        if name == "ablation":
            print(f"\n{EFFICIENCY_DEFINITION}")
    print(f"\nJSON and plots in {out}: " + ", ".join(p.name for p in plots)
          + f"; tables in {reference_md}")
