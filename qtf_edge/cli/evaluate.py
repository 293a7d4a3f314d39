"""`qtf-edge eval RUN_DIR`: perplexity per token and per word, and bits per byte."""

from __future__ import annotations

import json

import click

from qtf_edge.cli.main import cli, user_errors_exit_2
from qtf_edge.cli.run_loading import load_run_and_tokenizer
from qtf_edge.cli.tables import format_table, number
from qtf_edge.data import DataError, default_corpus, read_corpus
from qtf_edge.evaluate import evaluate_text, per_token_trace, visible_text


def _read_data(data: str | None) -> tuple[str, list[str]]:
    path = data if data is not None else str(default_corpus("valid"))
    try:
        return path, read_corpus(path)
    except DataError as error:
        raise ValueError(f"--data: {error}") from None


def _summary(run_dir: str, data: str, result) -> str:
    p = result.perplexity
    routed = result.routed_fraction
    rows = [
        ("run", run_dir),
        ("data", f"{data} ({result.lines:,} lines, {result.tokens:,} tokens predicted)"),
        ("parameters", number(result.params)),
        ("quantum fraction", "- (no router)" if routed is None
         else f"{routed:.3f} of tokens routed to quantum-kernel attention"),
        ("loss per token", f"{p.nll_per_token:.4f} nats"),
        ("perplexity per token", number(p.perplexity_per_token)),
        ("perplexity per word", f"{number(p.perplexity_per_word)} ({p.words:,} words)"),
        ("bits per byte", f"{p.bits_per_byte:.4f} ({p.bytes:,} bytes)"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def trace_table(rows: list[dict]) -> str:
    """One row per token; per block: entropy S (nats), hardness h, route and TT rank."""
    n_blocks = len(rows[0]["blocks"]) if rows else 0
    if n_blocks == 0:
        return "(no quantum encoder in this model: every token takes the same dense path)"
    headers = ["pos", "token"]
    for b in range(n_blocks):
        headers += [f"b{b} S", f"b{b} h", f"b{b} route", f"b{b} rank"]
    table = []
    for row in rows:
        cells = [row["position"], visible_text(row["text"])]
        for block in row["blocks"]:
            cells += [f"{block['entropy']:.3f}", f"{block['hardness']:.2f}",
                      block["route"] or "-", "-" if block["rank"] is None else block["rank"]]
        table.append(cells)
    right = {0} | {i for i in range(2, len(headers)) if not headers[i].endswith("route")}
    legend = ("S: entanglement entropy of the block's simulated qubit state (nats); "
              "h = S / S_max; route: attention path (quantum = QKSAM); rank: FFN TT rank")
    return format_table(headers, table, align_right=right) + "\n" + legend


@cli.command("eval")
@click.argument("run_dir")
@click.option("--data", help="Text file or folder of *.txt, one paragraph per line "
                             "[default: the shipped WikiText-2 valid excerpt].")
@click.option("--max-tokens", type=click.IntRange(min=2),
              help="Evaluate only the first N tokens of the data.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Windows of context_length tokens per forward pass.")
@click.option("--per-token", is_flag=True,
              help="Also show each token's entropy, route and TT rank per block, for the "
                   "first line of the data (or --text).")
@click.option("--text", help="Text for --per-token instead of the data's first line.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors_exit_2
def eval_command(run_dir, data, max_tokens, batch_size, per_token, text, as_json):
    """Evaluate RUN_DIR on text: perplexity per token and per word, bits per byte."""
    if text is not None and not per_token:
        raise ValueError("--text is only used with --per-token")
    if text is not None and not text.strip():
        raise ValueError("--text is empty: expected some text to trace")
    run, tokenizer = load_run_and_tokenizer(run_dir)
    data_path, lines = _read_data(data)
    result = evaluate_text(run.model, tokenizer, lines, batch_size=batch_size,
                           max_tokens=max_tokens)
    trace = per_token_trace(run.model, tokenizer, text or lines[0]) if per_token else None
    if as_json:
        report = {"run": str(run_dir), "data": data_path, **result.to_dict()}
        if trace is not None:
            report["per_token"] = trace
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(_summary(run_dir, data_path, result))
    if trace is not None:
        click.echo()
        click.echo(trace_table(trace))
