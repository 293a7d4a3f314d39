"""Options every command that derives a run from another (distill, compress) takes."""

from __future__ import annotations

import click

from qtf_edge.train.config import DEVICES

DERIVED_RUN_OPTIONS = (
    click.option("--data", type=click.Path(), default=None,
                 help="Validation text for the perplexities [default: shipped valid excerpt]."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed of the healing run."),
    click.option("--device", type=click.Choice(list(DEVICES)), default="cpu", show_default=True,
                 help="Where the healing run trains (and compress measures its losses and "
                      "perplexities)."),
    click.option("--overwrite", is_flag=True, help="Replace an existing --out."),
    click.option("--quiet", is_flag=True, help="No progress output and no table."),
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
)


def derived_run_options(command):
    for option in reversed(DERIVED_RUN_OPTIONS):
        command = option(command)
    return command
