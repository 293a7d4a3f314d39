"""Quantum token encoder: each token's features drive a simulated few-qubit circuit.

The circuit is simulated exactly on the CPU/GPU (a statevector of 2**n_qubits real
amplitudes per token). It gives two things per token: Pauli-Z expectations, projected
back into the residual stream as extra features, and the entanglement entropy of half of
the qubits (von Neumann, or Renyi-2 if the config says so), which measures how entangled
the token's state is. The entropy, as a fraction of its maximum, is the token's
"hardness": it sets the token's FFN rank and its route. In the deploy form the circuit is
folded into one constant matrix and the eigenvalues come from Jacobi sweeps (exportable).
"""

from __future__ import annotations

import torch
from torch import nn

from qtf_edge.config import ModelConfig
from qtf_edge.model.circuits import eigensolver, make_circuit
from qtf_edge.quantum import entanglement_entropy, max_entropy, pauli_z_expectations
from qtf_edge.quantum.precision import float32_simulation


class QuantumTokenEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_qubits = config.n_qubits
        self.to_angles = nn.Linear(config.d_model, config.n_qubits)
        self.circuit = make_circuit(config)
        self.entropy_measure, self.eigensolver = config.entropy, eigensolver(config)
        self.from_pauli_z = nn.Linear(config.n_qubits, config.d_model)
        self.max_entropy = max_entropy(config.n_qubits)

    @float32_simulation
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d) -> (features (B, T, d), entropy S_t (B, T) in nats)."""
        state = self.circuit(self.to_angles(x))
        features = self.from_pauli_z(pauli_z_expectations(state, self.n_qubits))
        entropy = entanglement_entropy(state, self.n_qubits, measure=self.entropy_measure,
                                       eigensolver=self.eigensolver)
        return features, entropy

    def hardness(self, entropy: torch.Tensor) -> torch.Tensor:
        """h_t = S_t / S_max in [0, 1]."""
        return entropy / self.max_entropy
