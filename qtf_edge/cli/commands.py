"""Import every command module so that each registers itself on the `cli` group."""

from qtf_edge.cli import (  # noqa: F401
    compress,
    distill,
    evaluate,
    export,
    generate,
    info,
    pareto,
    profile,
    report,
    train,
)
