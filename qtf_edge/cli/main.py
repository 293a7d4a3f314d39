"""`qtf-edge` entry point: the group, shared options and the bad-input contract.

Every command takes a run folder as its checkpoint, writes to --out, reads text with
--data and offers --json. Exit codes: 0 success; 2 bad input or an unmet budget (one
line on stderr naming the file or flag, no traceback); 1 an internal error (a bug).
"""

from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path

import click

from qtf_edge import __version__

# Errors that mean "the user's input is wrong": each carries a one-line message.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError)


def invocation() -> str:
    """The command line as the user typed it, for lineage.json; under a test runner (argv
    is not ours) the command's path, e.g. "qtf-edge train"."""
    if Path(sys.argv[0]).name == "qtf-edge":
        return shlex.join(["qtf-edge", *sys.argv[1:]])
    return click.get_current_context().command_path


def user_errors_exit_2(command):
    """Turn the library's bad-input errors into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            click.echo(f"error: {message}", err=True)
            sys.exit(2)

    return wrapper


class _OneLineUsageError(click.UsageError):
    """A click usage error (bad flag value, unknown option) shown as one line, like the
    library's errors, instead of click's usage + hint + message."""

    def __init__(self, error: click.UsageError):
        super().__init__(error.format_message(), error.ctx)

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class _OneLineErrorsGroup(click.Group):
    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as error:  # the group's own options
            raise _OneLineUsageError(error) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as error:  # an unknown command or a command's flags
            raise _OneLineUsageError(error) from None


@click.group(cls=_OneLineErrorsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qtf-edge")
def cli() -> None:
    """Train, compress, distill, export and profile Q-TensorFormer language models for
    small devices. "Quantum" here means an exact classical simulation of a few qubits."""


def _register() -> None:
    # Each command lives in its own module; importing them here keeps `cli` the one
    # place that lists what exists.
    from qtf_edge.cli import commands  # noqa: F401  (registers the commands on `cli`)


_register()
