"""Import every command module so that each registers itself on the `cli` group."""

from qtf_edge.cli import evaluate, generate, info  # noqa: F401
from qtf_edge.cli import train  # noqa: F401
from qtf_edge.cli import pareto  # noqa: F401
from qtf_edge.cli import distill  # noqa: F401
