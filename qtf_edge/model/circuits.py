"""The circuit a model part uses, by form: simulated from its angles, or folded (deploy)."""

from __future__ import annotations

from torch import nn

from qtf_edge.config import ModelConfig
from qtf_edge.quantum import FoldedCircuit, VariationalCircuit


def make_circuit(config: ModelConfig) -> nn.Module:
    if config.form == "deploy":
        return FoldedCircuit(config.n_qubits)
    return VariationalCircuit(config.n_qubits, config.n_qlayers, config.entangler)


def eigensolver(config: ModelConfig) -> str:
    """LAPACK while simulating (the reference); Jacobi sweeps in the deploy form (exportable)."""
    return "jacobi" if config.form == "deploy" else "lapack"
