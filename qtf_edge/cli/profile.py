"""`qtf-edge profile BUNDLE`: measured latency here, labelled energy, predictions elsewhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from qtf_edge.atomic import write_json_atomic
from qtf_edge.cli.main import cli, user_errors_exit_2
from qtf_edge.cli.tables import format_table, number
from qtf_edge.profile.pipeline import DEFAULT_TARGETS, ProfileOptions, profile_bundle


@cli.command("profile")
@click.argument("bundle", type=click.Path())
@click.option("--host-profile", default=ProfileOptions.host_profile, show_default=True,
              help="Hardware profile describing this machine (energy estimates, host "
                   "efficiency).")
@click.option("--target", "targets", multiple=True, default=DEFAULT_TARGETS,
              show_default=True, help="Profile to predict for (repeat the flag).")
@click.option("--runs", type=int, default=ProfileOptions.runs, show_default=True,
              help="Generations per artifact.")
@click.option("--seq-len", type=int, default=ProfileOptions.seq_len, show_default=True,
              help="Prompt tokens.")
@click.option("--new-tokens", type=int, default=ProfileOptions.new_tokens, show_default=True,
              help="Tokens generated per run.")
@click.option("--threads", type=int, default=ProfileOptions.threads, show_default=True,
              help="Runtime threads (predictions assume as many on the target).")
@click.option("--data", type=click.Path(), default=None,
              help="Prompt text [default: shipped valid excerpt].")
@click.option("--out", type=click.Path(), default=None, help="Also write the report as JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@user_errors_exit_2
def profile(bundle, host_profile, targets, runs, seq_len, new_tokens, threads, data, out,
            as_json, quiet):
    """Measure a bundle's graphs on this machine with its own run.py (prefill and per-token
    decode ms, tokens/s, peak RSS, size), label every energy figure measured (RAPL) or
    estimated (profile), and predict decode latency and energy on other devices from their
    profiles (labelled predicted). "Quantum" parts are exact classical simulations folded
    into the graphs; nothing here runs on quantum hardware.

    \b
      qtf-edge profile bundles/tiny-rpi
      qtf-edge profile bundles/tiny-rpi --target rpi4 --runs 50 --json
    """
    if out:
        check_writable(out)  # before minutes of measuring
    options = ProfileOptions(host_profile=host_profile, targets=tuple(targets), runs=runs,
                             seq_len=seq_len, new_tokens=new_tokens, threads=threads,
                             data=data)
    report = profile_bundle(bundle, options, progress=(lambda line: None) if quiet or as_json
                            else (lambda line: click.echo(line, err=True)))
    if out:
        write_json_atomic(out, report)
    click.echo(json.dumps(report, indent=2) if as_json else render(report))


def check_writable(out: str) -> None:
    """ValueError unless --out can be written: its folder exists and takes files."""
    folder = Path(out).resolve().parent
    if not folder.is_dir():
        raise ValueError(f"--out {out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or Path(out).is_dir():
        raise ValueError(f"--out {out}: cannot write a file there")


def render(report: dict) -> str:
    def ms(stats):
        return "-" if stats is None else f"{stats['median']:.3f} / {stats['p90']:.3f}"

    def energy(row, label):  # one column per label: measured and estimated never mix
        return number(row["energy"]["energy_uj"]) if row["energy"].get("label") == label \
            else "-"

    rows = [[r["artifact"], r["runtime"], f"{r['file_mb']:.2f}", ms(r["prefill_ms"]),
             ms(r["decode_ms_per_token"]), f"{r['tokens_per_s']:.1f}",
             f"{r['peak_rss_mb']:.1f}" if r["peak_rss_mb"] else "-",
             energy(r, "measured"), energy(r, "estimated")] for r in report["measured"]]
    lines = [f"{report['bundle']} (target {report['target']}), measured on this machine, "
             f"{report['options']['threads']} thread(s), {report['options']['runs']} runs",
             format_table(["artifact", "runtime", "MB", "prefill ms med/p90",
                           "decode ms/token med/p90", "tokens/s", "peak RSS MiB",
                           "measured uJ/token", "estimated uJ/token"], rows)]
    estimated = [r["energy"] for r in report["measured"] if r["energy"].get("label") ==
                 "estimated"]
    if estimated:
        lines.append(f"estimated energy: {estimated[0]['method']} (no RAPL counters: "
                     f"{estimated[0]['reason']})")
    operators = report["operators"]
    if operators:
        lines += ["", f"where a decode step goes (onnxruntime profiler, {operators['graph']}, "
                      f"{operators['steps']} steps; profiling slows every kernel, so read the "
                      f"shares): {operators['ms_per_step']:.3f} ms per step",
                  format_table(["part", "ms per step", "share", "kernels per step"],
                               [[part, f"{row['ms_per_step']:.3f}", f"{row['share']:.1%}",
                                 f"{row['kernels_per_step']:.0f}"]
                                for part, row in operators["parts"].items()])]
    if report["predictions"]:
        lines += ["", f"PREDICTED decode step at {report['decode_context']} tokens of context "
                      f"(roofline scaled by this machine's measured efficiency on the float "
                      f"ONNX graph, host profile {report['host_profile']}):",
                  format_table(["profile", "predicted ms/token", "tokens/s",
                                "predicted uJ/token", "bound", "host efficiency"],
                               [[p["profile"], f"{p['latency_ms']:.3f}",
                                 f"{p['tokens_per_s']:.0f}", number(p["energy_uj"]), p["bound"],
                                 f"{p['host_efficiency']:.1%}"] for p in report["predictions"]])]
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
