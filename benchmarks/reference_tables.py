"""Reproduce the reference model card's tables on WikiText-2 (issue 9): the entry point.

The work is done by the package beside this file, benchmarks/reference/ (its docstring, and
--help, say what each mode does). --train's jobs run this file again with --job, and
--measure's spawned export workers import the package by the path this file is run from.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The repository root goes on the path: the GPU machine has no installed package.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from reference.cli import main  # noqa: E402  (benchmarks/, this file's folder, is sys.path[0])

if __name__ == "__main__":
    sys.exit(main())
