"""`qtf-edge profile BUNDLE_OR_RUN`: measured latency here, labelled energy, predictions
elsewhere."""

from __future__ import annotations

import json

import click

from qtf_edge.atomic import write_json_atomic
from qtf_edge.cli.main import cli, user_errors_exit_2
from qtf_edge.cli.tables import format_table, number
from qtf_edge.cli.measure_options import check_writable, measurement_options
from qtf_edge.profile.pipeline import ProfileOptions, profile_path


@cli.command("profile")
@click.argument("bundle_or_run", type=click.Path())
@measurement_options(runs_default=ProfileOptions.runs)
@click.option("--data", type=click.Path(), default=None,
              help="Prompt text [default: shipped valid excerpt].")
@click.option("--out", type=click.Path(), default=None, help="Also write the report as JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@user_errors_exit_2
def profile(bundle_or_run, host_profile, targets, runs, seq_len, new_tokens, threads, data,
            out, as_json, quiet):
    """Measure a bundle's graphs on this machine with its own run.py (prefill and per-token
    decode ms, tokens/s, peak RSS, size), or a run folder in eager PyTorch; label every
    energy figure, per token and per query, measured (RAPL) or estimated (profile); and
    predict decode and query latency and energy on other devices from their profiles
    (labelled predicted; a profile calibrated on the device brings its own efficiency).
    "Quantum" parts are exact classical simulations folded into the graphs; nothing here
    runs on quantum hardware.

    \b
      qtf-edge profile bundles/tiny-rpi
      qtf-edge profile bundles/tiny-rpi --target rpi4 --runs 50 --json
      qtf-edge profile bundles/tiny-rpi --target pi4-mine.yaml   # from run.py --calibrate
      qtf-edge profile runs/tiny-qtf
    """
    if out:
        check_writable(out)  # before minutes of measuring
    options = ProfileOptions(host_profile=host_profile, targets=tuple(targets), runs=runs,
                             seq_len=seq_len, new_tokens=new_tokens, threads=threads,
                             data=data)
    report = profile_path(bundle_or_run, options, progress=(lambda line: None)
                          if quiet or as_json else (lambda line: click.echo(line, err=True)))
    if out:
        write_json_atomic(out, report)
    click.echo(json.dumps(report, indent=2) if as_json else render(report))


def render(report: dict) -> str:
    def ms(stats):
        return "-" if stats is None else f"{stats['median']:.3f} / {stats['p90']:.3f}"

    def energy(row, label, per_query, key):  # measured and estimated never share a column
        figures = row["energy"]
        if figures.get("label") != label:
            return "-"
        return number((figures.get("per_query", {}) if per_query else figures).get(key))

    options, query = report["options"], report["query"]
    subject = (f"{report['bundle']} (target {report['target']})" if report["bundle"]
               else f"{report['run']} (run folder, eager PyTorch)")
    latency = [[r["artifact"], r["runtime"], f"{r['file_mb']:.2f}", ms(r["prefill_ms"]),
                ms(r["decode_ms_per_token"]), f"{r['tokens_per_s']:.1f}",
                f"{r['peak_rss_mb']:.1f}" if r["peak_rss_mb"] else "-"]
               for r in report["measured"]]
    energies = [[r["artifact"], *(energy(r, label, per_query, key)
                                  for label in ("measured", "estimated")
                                  for per_query, key in ((False, "energy_uj"),
                                                         (True, "energy_uj"),
                                                         (True, "co2_g")))]
                for r in report["measured"]]
    lines = [f"{subject}, measured on this machine, {options['threads']} thread(s), "
             f"{options['runs']} runs",
             format_table(["artifact", "runtime", "MB", "prefill ms med/p90",
                           "decode ms/token med/p90", "tokens/s", "peak RSS MiB"], latency),
             "", f"energy per token and per query (a query: the prefill of "
                 f"{query['prompt_tokens']} tokens, then {query['decode_steps']} decode "
                 f"steps; gCO2 at host profile {report['host_profile']}'s grid intensity)",
             format_table(["artifact", "measured uJ/token", "measured uJ/query",
                           "measured gCO2/query", "estimated uJ/token", "estimated uJ/query",
                           "estimated gCO2/query"], energies)]
    estimated = [r["energy"] for r in report["measured"] if r["energy"].get("label") ==
                 "estimated"]
    if estimated:
        lines.append(f"estimated energy: {estimated[0]['method']} (no RAPL counters: "
                     f"{estimated[0]['reason']})")
    operators = report["operators"]
    if operators:
        lines += ["", f"where a decode step goes ({operators['graph']}, {operators['steps']} "
                      f"steps, timed by {operators['method']}): "
                      f"{operators['ms_per_step']:.3f} ms per step",
                  format_table(["part", "ms per step", "share", "kernels per step"],
                               [[part, f"{row['ms_per_step']:.3f}", f"{row['share']:.1%}",
                                 number(row.get("kernels_per_step"))]
                                for part, row in operators["parts"].items()])]
    if report["predictions"]:
        lines += ["", f"PREDICTED, not measured: a decode step at {report['decode_context']} "
                      f"tokens of context, and a query (roofline divided by an efficiency: "
                      f"the device's own where its profile was calibrated on it, else this "
                      f"machine's, measured on {report['efficiency_basis']} against host "
                      f"profile {report['host_profile']}; a query's prefill always takes "
                      f"this machine's)",
                  format_table(["profile", "ms/token", "tokens/s", "uJ/token", "ms/query",
                                "uJ/query", "gCO2/query", "bound", "efficiency"],
                               [[p["profile"], f"{p['latency_ms']:.3f}",
                                 f"{p['tokens_per_s']:.0f}", number(p["energy_uj"]),
                                 f"{p['query']['latency_ms']:.3f}",
                                 number(p["query"]["energy_uj"]), number(p["query"]["co2_g"]),
                                 p["bound"],
                                 f"{p['efficiency']:.1%} ({p['efficiency_from']})"]
                                for p in report["predictions"]])]
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
