"""`qtf-edge distill RUN --out DIR`: the deploy form (no circuit simulation left)."""

from __future__ import annotations

import json

import click

from qtf_edge.cli.derived_options import derived_run_options
from qtf_edge.cli.main import cli, invocation, user_errors_exit_2
from qtf_edge.cli.tables import format_table, number
from qtf_edge.derived import DEFAULT_CALIBRATION_TOKENS
from qtf_edge.distill import DistillOptions, distill_run
from qtf_edge.distill.deploy import DEFAULT_MARGIN
from qtf_edge.kan import GRID_SIZE_RANGE, ORDER_RANGE


@cli.command("distill")
@click.argument("checkpoint", type=click.Path())
@click.option("--out", type=click.Path(), required=True, help="New run folder (deploy form).")
@click.option("--calib", type=click.Path(), default=None,
              help="Calibration text: sets each activation's input range, and heals "
                   "[default: shipped train excerpt].")
@click.option("--calib-tokens", type=click.IntRange(2), default=DEFAULT_CALIBRATION_TOKENS,
              show_default=True, help="Calibration tokens read from --calib.")
@click.option("--grid", type=click.IntRange(*GRID_SIZE_RANGE), default=16, show_default=True,
              help="B-spline intervals per channel.")
@click.option("--order", type=click.IntRange(*ORDER_RANGE), default=3, show_default=True,
              help="B-spline order k (3: cubic).")
@click.option("--margin", type=click.FloatRange(0, 10), default=DEFAULT_MARGIN,
              show_default=True, help="Widen each channel's calibration range by this share "
                                      "of it on each side; outside, splines extend linearly.")
@click.option("--finetune-steps", type=click.IntRange(0), default=0, show_default=True,
              help="Heal the deploy form by this many training steps on --calib.")
@click.option("--finetune-lr", type=click.FloatRange(0, min_open=True),
              default=DistillOptions.finetune_lr,
              show_default=True, help="Peak learning rate of the healing run.")
@derived_run_options
@user_errors_exit_2
def distill(checkpoint, out, calib, calib_tokens, data, grid, order, margin, finetune_steps,
            finetune_lr, seed, device, overwrite, quiet, as_json):
    """Fold circuits into constant matrices and fit B-splines to DARUAN activations.

    The result computes without simulating anything: encoders and QKSAM use folded
    unitaries, entropies come from Jacobi sweeps, FFNs use B-spline KAN activations
    (pykan's layout). Reports fit errors, decision agreement and perplexities.

    \b
      qtf-edge distill runs/tiny-qtf --out runs/tiny-deploy
      qtf-edge distill runs/small-qtf --out runs/small-deploy --grid 32 --finetune-steps 200
    """
    options = DistillOptions(calib=calib, calib_tokens=calib_tokens, data=data, grid=grid,
                             order=order, margin=margin, finetune_steps=finetune_steps,
                             finetune_lr=finetune_lr, seed=seed, device=device)
    report = distill_run(checkpoint, out, options, overwrite=overwrite,
                         quiet=quiet or as_json, command=invocation())
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    elif not quiet:
        click.echo(render(report))


def render(report) -> str:
    if report.copied:
        return f"{report.out}: copied {report.source} as it is ({report.copied})"
    lines = [f"{report.out}: deploy form of {report.source} (no circuit simulation; "
             f"'quantum' parts were exact classical simulations, now folded)", ""]
    lines.append(format_table(
        ["layer", "channels", "fit range", "max |error|", "bound", "rms error"],
        [[r["layer"], r["channels"], f"[{r['fit_min']:.2f}, {r['fit_max']:.2f}]",
          f"{r['max_abs_error']:.2e}", f"{r['error_bound']:.2e}", f"{r['rms_error']:.2e}"]
         for r in report.layers]))
    lines.append("")
    lines.append(format_table(
        ["model", "ppl/token", "ppl/word", "bits/byte", "routed"],
        [[name, number(p["per_token"]), number(p["per_word"]), f"{p['bits_per_byte']:.4f}",
          number(p["routed_fraction"], 3)] for name, p in report.perplexity.items()]))
    folding, end_to_end, logits = report.folding, report.end_to_end, report.logits
    lines.append("")
    lines.append(f"folding alone: routes agree {_rate(folding['route_agreement'])}, ranks "
                 f"{_rate(folding['rank_agreement'])} ({folding['ties']} ties), max entropy "
                 f"difference {folding['max_entropy_difference']:.1e} nats")
    lines.append(f"deploy form end to end: routes agree {_rate(end_to_end['route_agreement'])}, "
                 f"ranks {_rate(end_to_end['rank_agreement'])}; logits max |diff| "
                 f"{logits['max_abs_diff']:.3g}, mean {logits['mean_abs_diff']:.3g}, "
                 f"top-1 agreement {_rate(logits['top1_agreement'])}")
    return "\n".join(lines)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
