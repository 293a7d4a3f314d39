"""What machine this is, for the headers of benchmark tables and profiles."""

from __future__ import annotations

import platform

import torch


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_host(threads: int) -> str:
    return (f"{cpu_model()} ({platform.machine()}), torch {torch.__version__}, "
            f"{threads} thread{'s' if threads != 1 else ''}")
