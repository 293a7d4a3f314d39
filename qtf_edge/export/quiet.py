"""Keep the export tools quiet: the exporters, quantisers and converters print progress,
warnings and log lines, from Python and from C++ (absl, XNNPACK), which would break the
CLI's own output (and --json). Errors still raise."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings


@contextlib.contextmanager
def quiet_tools():
    """Within the block: no warnings, no log records below ERROR, and stdout and stderr
    (Python's and the process's file descriptors 1 and 2) go nowhere."""
    # A NullHandler keeps a tool's logging.warning() from installing a stderr handler on
    # the root logger for good (basicConfig runs when the root has none).
    root, null = logging.getLogger(), logging.NullHandler()
    root.addHandler(null)
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    sink = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            os.dup2(sink, fd)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(sink)
        logging.disable(disabled)
        root.removeHandler(null)
