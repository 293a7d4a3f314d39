"""`qtf-edge export RUN --target T --out BUNDLE`: a self-checking bundle for a device."""

from __future__ import annotations

import json

import click

from qtf_edge.cli.main import cli, user_errors_exit_2
from qtf_edge.cli.tables import format_table, number
from qtf_edge.export.edgetpu import summary as edgetpu_summary
from qtf_edge.export.pipeline import ExportOptions, export_run
from qtf_edge.export.recipes import known_targets, load_recipe


@cli.command("export")
@click.argument("checkpoint", type=click.Path(), required=False)
@click.option("--target", default=ExportOptions.target, show_default=True,
              help="Export recipe: a name from --list-targets, or a recipe YAML file.")
@click.option("--out", type=click.Path(), default=None, help="Bundle folder to write.")
@click.option("--list-targets", is_flag=True, help="Print the known targets and exit.")
@click.option("--distill", is_flag=True,
              help="Fold a simulated checkpoint into its deploy form here (else refused).")
@click.option("--calib", type=click.Path(), default=None,
              help="Calibration text: distillation (--distill) and full-integer int8 "
                   "ranges [default: shipped train excerpt; for int8, the recipe's "
                   "representative_dataset].")
@click.option("--calib-tokens", type=click.IntRange(2), default=ExportOptions.calib_tokens,
              show_default=True, help="Tokens read from --calib.")
@click.option("--data", type=click.Path(), default=None,
              help="Validation text every artifact is scored on [default: shipped valid "
                   "excerpt].")
@click.option("--data-tokens", type=click.IntRange(2), default=ExportOptions.eval_tokens,
              show_default=True, help="Tokens read from --data.")
@click.option("--max-size-mb", type=click.FloatRange(0, min_open=True), default=None,
              help="Weights may grow to this size when TT layers are materialised "
                   "[default: a compressed run's own size budget, else no limit].")
@click.option("--threads", type=click.IntRange(1), default=ExportOptions.threads,
              show_default=True, help="onnxruntime threads for validation on this machine.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--quiet", is_flag=True, help="No progress output and no table.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@user_errors_exit_2
def export(checkpoint, target, out, list_targets, distill, calib, calib_tokens, data,
           data_tokens, max_size_mb, threads, force, quiet, as_json):
    """Compile a run into ONNX graphs (float and int8), validate them against the
    checkpoint, and write a bundle that runs offline with runtimes/run.py (no torch).

    \b
      qtf-edge export runs/tiny-deploy --target rpi --out bundles/tiny-rpi
      qtf-edge export runs/tiny-qtf --distill --target cpu --out bundles/tiny-cpu
      qtf-edge export --list-targets
    """
    if list_targets:
        click.echo(render_targets(as_json))
        return
    if checkpoint is None or out is None:
        raise click.UsageError("give a CHECKPOINT and --out (or --list-targets)")
    options = ExportOptions(target=target, distill=distill, calib=calib,
                            calib_tokens=calib_tokens, data=data, eval_tokens=data_tokens,
                            max_size_mb=max_size_mb, threads=threads, force=force)
    show_progress = not (quiet or as_json)
    report = export_run(checkpoint, out, options,
                        progress=lambda line: click.echo(line, err=True) if show_progress
                        else None)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    elif not quiet:
        click.echo(render(report))


def render_targets(as_json: bool) -> str:
    recipes = [load_recipe(name) for name in known_targets()]
    if as_json:
        return json.dumps([{"target": r.name, "profile": r.profile, "formats": list(r.formats),
                            "runtime": r.runtime, "threads": r.threads, "passes": list(r.passes),
                            "file": str(r.path)} for r in recipes], indent=2)
    return format_table(["target", "profile", "formats", "runtime", "passes"],
                        [[r.name, r.profile, ", ".join(r.formats), r.runtime,
                          " > ".join(r.passes)] for r in recipes])


def render(report: dict) -> str:
    lines = [f"{report['out']}: bundle for target {report['target']} from {report['source']}", ""]
    torch_rows = [p for p in report["passes"] if "before" in p]
    lines.append(format_table(
        ["pass", "params", "FLOPs/query", "latency ms (est.)", "max logit change", "s"],
        [[p["pass"], f"{number(p['before']['params'])} > {number(p['after']['params'])}",
          f"{number(p['before']['flops'])} > {number(p['after']['flops'])}",
          f"{number(p['before']['latency_ms'])} > {number(p['after']['latency_ms'])}",
          f"{p['max_logit_change']:.2g}", f"{p['seconds']:.1f}"] for p in torch_rows]))
    validation = next((p["results"] for p in report["passes"] if p["pass"] == "validate"), {})
    rows = [[entry["graph"], f"{entry['max_abs_diff']:.2g}", f"{entry['mean_abs_diff']:.2g}",
             f"{entry['top1_agreement']:.4f}", number(entry["perplexity"]),
             number(entry["torch_perplexity"])]
            for result in validation.values() for entry in result.values()]
    if rows:
        lines += ["", format_table(["artifact", "max |diff|", "mean |diff|", "top-1 agree",
                                    "ppl/token", "torch ppl"], rows)]
    edgetpu = next((p["report"] for p in report["passes"] if p["pass"] == "edgetpu_check"), None)
    if edgetpu is not None:
        lines += ["", edgetpu_summary(edgetpu),
                  f"compile it (in the bundle, where edgetpu_compiler is installed): "
                  f"{edgetpu['compiler_command']}"]
    lines += ["", f"run it: python3 {report['out']}/run.py {report['out']} --prompt \"...\""]
    return "\n".join(lines)
