"""Options every command that measures a model on this machine (profile, report) takes,
and the --out check both make before minutes of measuring."""

from __future__ import annotations

import os
from pathlib import Path

import click

from qtf_edge.profile.pipeline import DEFAULT_TARGETS, ProfileOptions


def measurement_options(runs_default: int):
    """--host-profile, --target, --runs, --seq-len, --new-tokens, --threads."""
    options = (
        click.option("--host-profile", default=ProfileOptions.host_profile, show_default=True,
                     help="Hardware profile describing this machine (energy estimates, host "
                          "efficiency)."),
        click.option("--target", "targets", multiple=True, default=DEFAULT_TARGETS,
                     show_default=True,
                     help="Profile to predict for: a shipped name or a YAML file, e.g. one "
                          "run.py --calibrate wrote on the device (repeat the flag)."),
        click.option("--runs", type=int, default=runs_default, show_default=True,
                     help="Generations per artifact."),
        click.option("--seq-len", type=int, default=ProfileOptions.seq_len, show_default=True,
                     help="Prompt tokens."),
        click.option("--new-tokens", type=int, default=ProfileOptions.new_tokens,
                     show_default=True, help="Tokens generated per run."),
        click.option("--threads", type=int, default=ProfileOptions.threads, show_default=True,
                     help="Runtime threads (predictions assume as many on the target)."),
    )

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def check_writable(out: str) -> None:
    """ValueError unless --out can be written: its folder exists and takes files."""
    folder = Path(out).resolve().parent
    if not folder.is_dir():
        raise ValueError(f"--out {out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or Path(out).is_dir():
        raise ValueError(f"--out {out}: cannot write a file there")
