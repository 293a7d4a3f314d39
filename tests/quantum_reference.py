"""Test-only brute-force oracle for the few-qubit simulator, in numpy float64/complex128.

Every gate is a full 2**n x 2**n matrix, kron(I, ..., G, ..., I), CNOT and CZ are built
from projectors, and circuits are plain matrix products. Deliberately imports nothing
from qtf_edge, so that it cannot share a bug with the fast code.
Qubit 0 is the most significant bit (the leftmost kron factor).
"""

from __future__ import annotations

import numpy as np

I2 = np.eye(2)
X = np.array([[0.0, 1.0], [1.0, 0.0]])
Z = np.diag([1.0, -1.0])
P0, P1 = np.diag([1.0, 0.0]), np.diag([0.0, 1.0])


def ry(theta: float) -> np.ndarray:
    c, s = np.cos(theta / 2), np.sin(theta / 2)
    return np.array([[c, -s], [s, c]])


def rz(theta: float) -> np.ndarray:
    return np.diag([np.exp(-0.5j * theta), np.exp(0.5j * theta)])


def embed(gates: dict[int, np.ndarray], n: int) -> np.ndarray:
    """kron over qubits 0..n-1 of gates[q], identity where q is absent."""
    full = np.eye(1)
    for q in range(n):
        full = np.kron(full, gates.get(q, I2))
    return full


def cnot(control: int, target: int, n: int) -> np.ndarray:
    return embed({control: P0}, n) + embed({control: P1, target: X}, n)


def cz(a: int, b: int, n: int) -> np.ndarray:
    return embed({a: P0}, n) + embed({a: P1, b: Z}, n)


def ring(n: int) -> list[tuple[int, int]]:
    return [(0, 1)] if n == 2 else [(q, (q + 1) % n) for q in range(n)]


def circuit_unitary(theta: np.ndarray, entangler: str) -> np.ndarray:
    """theta (L, n): per layer RY on every qubit, then the CNOT or CZ ring."""
    n = theta.shape[1]
    entangle = cnot if entangler == "cnot" else cz
    unitary = np.eye(2**n)
    for layer in theta:
        for q in range(n):
            unitary = embed({q: ry(layer[q])}, n) @ unitary
        for a, b in ring(n):
            unitary = entangle(a, b, n) @ unitary
    return unitary


def encode(angles: np.ndarray) -> np.ndarray:
    """angles (n,) -> RY(a_{n-1}) ... RY(a_0) |0...0>."""
    n = len(angles)
    state = np.zeros(2**n)
    state[0] = 1.0
    for q, angle in enumerate(angles):
        state = embed({q: ry(angle)}, n) @ state
    return state


def circuit_state(angles: np.ndarray, theta: np.ndarray, entangler: str) -> np.ndarray:
    return circuit_unitary(theta, entangler) @ encode(angles)


def pauli_z(state: np.ndarray) -> np.ndarray:
    n = int(np.log2(len(state)))
    return np.array([np.vdot(state, embed({q: Z}, n) @ state).real for q in range(n)])


def reduced_density_matrix(state: np.ndarray, keep: list[int]) -> np.ndarray:
    """Partial trace of |psi><psi| by explicit sums over basis states (rows ordered as keep)."""
    n = int(np.log2(len(state)))
    rho_full = np.outer(state, state.conj())
    bits = [[(i >> (n - 1 - q)) & 1 for q in range(n)] for i in range(2**n)]
    rest = [q for q in range(n) if q not in keep]

    def sub_index(i: int, qubits: list[int]) -> int:
        return sum(bits[i][q] << (len(qubits) - 1 - pos) for pos, q in enumerate(qubits))

    rho = np.zeros((2 ** len(keep), 2 ** len(keep)), dtype=complex)
    for i in range(2**n):
        for j in range(2**n):
            if sub_index(i, rest) == sub_index(j, rest):
                rho[sub_index(i, keep), sub_index(j, keep)] += rho_full[i, j]
    return rho


def entropy(state: np.ndarray, keep: list[int]) -> float:
    p = np.linalg.eigvalsh(reduced_density_matrix(state, keep))
    p = p[p > 1e-14]
    return float(-(p * np.log(p)).sum())
