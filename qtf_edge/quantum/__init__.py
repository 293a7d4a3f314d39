"""Exact classical simulation of a few qubits (2..10) for the quantum-inspired model parts.

Nothing here runs on, or needs, quantum hardware: states are torch tensors (..., 2**n) of
amplitudes, gates are small matrices, index gathers or sign flips, and everything is
batched over leading dims and differentiable with autograd. Qubit 0 is the most
significant bit of a basis-state index (kron(q0, q1, ...) order).
"""

from qtf_edge.quantum.circuit import VariationalCircuit, ring_pairs
from qtf_edge.quantum.daruan import DARUAN, simulate_daruan
from qtf_edge.quantum.entropy import (entanglement_entropy, max_entropy, reduced_density_matrix,
                                      renyi2_entropy, von_neumann_entropy)
from qtf_edge.quantum.folded import FoldedCircuit
from qtf_edge.quantum.jacobi import jacobi_eigenvalues
from qtf_edge.quantum.gates import (HADAMARD, MAX_QUBITS, MIN_QUBITS, PAULI_Z, cnot_permutation,
                                    cz_signs, ry, rz)
from qtf_edge.quantum.kernel import fidelity_kernel
from qtf_edge.quantum.statevector import (angle_encode, apply_cnot, apply_cz, apply_single_qubit,
                                          pauli_z_expectations, zero_state)

__all__ = [
    "DARUAN", "FoldedCircuit", "HADAMARD", "MAX_QUBITS", "MIN_QUBITS", "PAULI_Z", "VariationalCircuit",
    "angle_encode", "apply_cnot", "apply_cz", "apply_single_qubit", "cnot_permutation",
    "cz_signs", "entanglement_entropy", "fidelity_kernel", "jacobi_eigenvalues", "max_entropy",
    "pauli_z_expectations", "reduced_density_matrix", "renyi2_entropy", "ring_pairs", "ry", "rz",
    "simulate_daruan", "von_neumann_entropy", "zero_state",
]
