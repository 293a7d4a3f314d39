"""A trained variational circuit folded into one constant matrix (the deploy form).

After training, the variational part of a circuit no longer changes: its 2**n x 2**n
unitary (real orthogonal, since RY, CNOT and CZ are real gates) is computed once from
the trained angles and stored. The circuit is then angle encoding (a Kronecker product
of [cos(a/2), sin(a/2)] vectors) followed by one matmul: no gate simulation, no complex
numbers, nothing an exporter cannot express. The unitary is a buffer, not a parameter:
fine-tuning the deploy form keeps it fixed, so the states stay unit vectors.
"""

from __future__ import annotations

import torch
from torch import nn

from qtf_edge.quantum.circuit import VariationalCircuit
from qtf_edge.quantum.gates import check_n_qubits
from qtf_edge.quantum.statevector import angle_encode


class FoldedCircuit(nn.Module):
    def __init__(self, n_qubits: int):
        super().__init__()
        check_n_qubits(n_qubits)
        self.n_qubits = n_qubits
        # Identity until folded from a trained circuit (fold_circuit or a deploy-form load).
        self.register_buffer("folded_unitary", torch.eye(2**n_qubits))

    @classmethod
    def fold(cls, circuit: VariationalCircuit) -> "FoldedCircuit":
        folded = cls(circuit.n_qubits)
        with torch.no_grad():
            folded.folded_unitary.copy_(circuit.unitary())
        return folded.to(circuit.theta.device)

    def extra_repr(self) -> str:
        return f"n_qubits={self.n_qubits}"

    def unitary(self) -> torch.Tensor:
        return self.folded_unitary

    def forward(self, angles: torch.Tensor) -> torch.Tensor:
        """angles (..., n) -> state (..., 2**n)."""
        if angles.ndim < 1 or angles.shape[-1] != self.n_qubits:
            raise ValueError(f"angles must have shape (..., {self.n_qubits}), got {tuple(angles.shape)}")
        return angle_encode(angles) @ self.folded_unitary.mT
