"""Throwaway Python environments holding only what a device has: numpy, tokenizers and one
inference runtime, installed from runtimes/requirements-<runtime>.txt. No torch, no
qtf_edge: a bundle's run.py must work there on its own.

Building one takes a minute (pip), so each is kept under QTF_EDGE_DEVICE_VENVS (default
~/.cache/qtf-edge/device-venvs), keyed by the requirements file and this Python's version;
it is built in a staging folder and renamed into place, so a failed build leaves nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from qtf_edge.resources import data_dir

CACHE = Path(os.environ.get("QTF_EDGE_DEVICE_VENVS",
                            Path.home() / ".cache" / "qtf-edge" / "device-venvs"))


def requirements(runtime: str) -> Path:
    return data_dir("runtimes") / f"requirements-{runtime}.txt"


def device_python(runtime: str) -> Path:
    """The python executable of an environment with only that runtime's requirements."""
    spec = requirements(runtime).read_bytes() + sys.version.encode()
    home = CACHE / f"{runtime}-{hashlib.sha256(spec).hexdigest()[:12]}"
    python = home / "bin" / "python"
    if python.exists():
        return python
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=CACHE, prefix=f".{runtime}-"))
    try:
        venv.create(staging, with_pip=True, clear=True)
        # `python -m pip`, never the pip script: its shebang would name the staging folder
        subprocess.run([str(staging / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "-r", str(requirements(runtime))], check=True, capture_output=True,
                       text=True, timeout=900)
        staging.rename(home)
    except subprocess.CalledProcessError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise AssertionError(f"pip could not build the {runtime} environment:\n"
                             f"{error.stderr[-2000:]}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return python


def run(python: Path, *args) -> subprocess.CompletedProcess:
    """Run the environment's python with nothing of the host's: no PYTHONPATH, and a
    working folder outside the repository (`python -c` puts it on sys.path)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(python), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir(), timeout=600)
