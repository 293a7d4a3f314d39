"""`qtf-edge report RUN_OR_BUNDLE --out report.html`: one page a person can read."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qtf_edge.atomic import write_json_atomic, write_text_atomic
from qtf_edge.cli.main import cli, user_errors_exit_2
from qtf_edge.cli.measure_options import check_writable, measurement_options
from qtf_edge.profile.pipeline import ProfileOptions
from qtf_edge.report.collect import RUNS, ReportOptions, build_report
from qtf_edge.report.html import SECTIONS, render_html


@cli.command("report")
@click.argument("path", metavar="RUN_OR_BUNDLE", type=click.Path())
@click.option("--out", type=click.Path(), required=True,
              help="The HTML file to write; its JSON goes beside it (.json).")
@click.option("--data", type=click.Path(), default=None,
              help="Text for perplexity and the sample sentence [default: shipped valid "
                   "excerpt].")
@click.option("--text", default=None,
              help="Sample sentence for the entropy/routing heat map [default: the data's "
                   "first line of 40 words or more].")
@click.option("--max-tokens", type=click.IntRange(min=2), default=ReportOptions.max_tokens,
              show_default=True, help="Tokens of --data evaluated.")
@measurement_options(runs_default=RUNS)
@click.option("--json", "as_json", is_flag=True, help="Print the report's JSON.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@user_errors_exit_2
def report(path, out, data, text, max_tokens, runs, seq_len, new_tokens, threads,
           host_profile, targets, as_json, quiet):
    """Write one self-contained HTML page (plots embedded as PNG) about a run folder or a
    bundle: model card, Pareto frontier, measured latency by model part, entropy and
    routing on a sample sentence, energy per query (every figure labelled measured,
    estimated or predicted), and the manifest. "Quantum" parts are exact classical
    simulations.

    \b
      qtf-edge report runs/tiny-qtf --out report.html
      qtf-edge report bundles/tiny-rpi --out rpi-report.html --runs 20
    """
    if not str(out).endswith((".html", ".htm")):
        raise ValueError(f"--out {out}: expected an .html file name")
    json_path = Path(out).with_suffix(".json")
    for written in (out, json_path):  # before minutes of measuring
        check_writable(str(written))
    measure = ProfileOptions(host_profile=host_profile, targets=tuple(targets), runs=runs,
                             seq_len=seq_len, new_tokens=new_tokens, threads=threads,
                             data=data)
    options = ReportOptions(measure, text=text, max_tokens=max_tokens)
    doc, figures = build_report(path, options, progress=(lambda line: None) if quiet or as_json
                                else (lambda line: click.echo(line, err=True)))
    write_json_atomic(json_path, doc)
    write_text_atomic(out, render_html(doc, figures))
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        shown = ", ".join(title for _, title in SECTIONS)
        click.echo(f"wrote {out} ({shown}; {len(figures)} plots) and {json_path}")
