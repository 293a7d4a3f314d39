"""Running the CLI in tests, and what a user error must look like."""

from __future__ import annotations

from click.testing import CliRunner

from qtf_edge.cli.main import cli


def invoke(*args):
    """`qtf-edge ARGS...` in this process; arguments may be paths or numbers."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *expected):
    """Exit 2 with exactly one line on stderr, no traceback, containing each expected text."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for text in expected:
        assert text in lines[0], lines[0]
