"""Reduced density matrices and entanglement entropy of simulated few-qubit states.

"Quantum" here is an exact classical simulation: states are tensors (..., 2**n) of
amplitudes, qubit 0 the most significant bit of the index (see gates.py).

For a pure state split into parts A (k qubits) and B (n - k qubits), reshape the
amplitudes into psi_A of shape (2**k, 2**(n-k)); then rho_A = psi_A psi_A^dagger and the
entanglement entropy is S = -Tr(rho_A log rho_A) (natural log, in nats), or, as the
config may choose, the Renyi-2 entropy S_2 = -log Tr(rho_A^2), which needs no eigenvalues.

Von Neumann eigenvalues come from LAPACK (eigvalsh: the reference, used while training)
or from fixed-sweep Jacobi rotations (jacobi.py: exportable, used by the deploy form).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from qtf_edge.quantum.gates import check_n_qubits
from qtf_edge.quantum.jacobi import jacobi_eigenvalues
from qtf_edge.quantum.statevector import abs_squared, check_state

DEFAULT_EPS = 1e-12
MEASURES = ("von_neumann", "renyi2")
EIGENSOLVERS = ("lapack", "jacobi")


def _check_subsystem(qubits: Sequence[int], n: int, name: str) -> list[int]:
    qubits = list(qubits)
    if not qubits or len(set(qubits)) != len(qubits) or any(
            isinstance(q, bool) or not isinstance(q, int) or not 0 <= q < n for q in qubits):
        raise ValueError(f"{name} must be distinct qubit indices in [0, {n - 1}], "
                         f"at least one, got {qubits!r}")
    return qubits


def _split(state: torch.Tensor, n: int, keep: list[int]) -> torch.Tensor:
    """state (..., 2**n) -> psi_A (..., 2**k, 2**(n-k)): kept qubits (in the given order) index the rows."""
    batch = state.shape[:-1]
    rest = [q for q in range(n) if q not in keep]
    axes = [len(batch) + q for q in keep + rest]
    tensor = state.reshape(*batch, *(2,) * n).permute(*range(len(batch)), *axes)
    return tensor.reshape(*batch, 2 ** len(keep), 2 ** len(rest))


def reduced_density_matrix(state: torch.Tensor, n: int, keep: Sequence[int]) -> torch.Tensor:
    """Trace out every qubit not in keep: state (..., 2**n) -> rho (..., 2**k, 2**k).

    Row/column order of rho follows the order of keep (keep[0] most significant).
    Works for real and complex states; rho is Hermitian, PSD, trace 1 for a unit state.
    """
    check_state(state, n)
    psi = _split(state, n, _check_subsystem(keep, n, "keep"))
    return psi @ psi.mH


def von_neumann_entropy(rho: torch.Tensor, eps: float = DEFAULT_EPS,
                        eigensolver: str = "lapack") -> torch.Tensor:
    """S = -Tr(rho log rho) = -sum_i p_i log p_i over the eigenvalues p_i; rho (..., d, d) -> (...).

    The eigenvalues are clamped to [eps, 1]: the derivative of p log p is log p + 1,
    infinite at p = 0, which is exact for product states (rank-1 rho), and rounding can
    make a true 0 slightly negative, where log is NaN. Clamped eigenvalues get zero
    gradient instead, and change S by at most d * eps * |log eps| (~3e-11 for d = 1).
    eigensolver: "lapack" (torch.linalg.eigvalsh) or "jacobi" (real rho only, exportable).
    """
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    _check_square(rho)
    if eigensolver == "lapack":
        p = torch.linalg.eigvalsh(rho)
    elif eigensolver == "jacobi":
        p = jacobi_eigenvalues(rho)
    else:
        raise ValueError(f"eigensolver must be one of {EIGENSOLVERS}, got {eigensolver!r}")
    p = p.clamp(eps, 1.0)
    return -(p * p.log()).sum(-1)


def renyi2_entropy(rho: torch.Tensor) -> torch.Tensor:
    """S_2 = -log Tr(rho^2); rho (..., d, d) Hermitian -> (...). Tr(rho^2) = sum_ij |rho_ij|^2
    lies in [1/d, 1] for a density matrix, so the log is always defined."""
    _check_square(rho)
    return -abs_squared(rho).sum((-2, -1)).log()


def _check_square(rho: torch.Tensor) -> None:
    if rho.ndim < 2 or rho.shape[-1] != rho.shape[-2]:
        raise ValueError(f"rho must have shape (..., d, d), got {tuple(rho.shape)}")


def entanglement_entropy(state: torch.Tensor, n: int, subsystem: Sequence[int] | None = None,
                         eps: float = DEFAULT_EPS, measure: str = "von_neumann",
                         eigensolver: str = "lapack") -> torch.Tensor:
    """Entanglement entropy of a subsystem of a pure state: (..., 2**n) -> (...), nats.

    subsystem defaults to the first n // 2 qubits. A pure state's two sides have the same
    entropy (either measure), so the smaller side's density matrix is the one used.
    measure: "von_neumann" or "renyi2"; eigensolver: see von_neumann_entropy.
    """
    check_state(state, n)
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    subsystem = _check_subsystem(range(n // 2) if subsystem is None else subsystem, n, "subsystem")
    complement = [q for q in range(n) if q not in subsystem]
    smaller = subsystem if len(subsystem) <= len(complement) else complement
    if not smaller:  # the whole system: a pure state has zero entropy
        return state.real.new_zeros(state.shape[:-1])
    rho = reduced_density_matrix(state, n, smaller)
    if measure == "renyi2":
        return renyi2_entropy(rho)
    return von_neumann_entropy(rho, eps, eigensolver)


def max_entropy(n: int, subsystem: Sequence[int] | None = None) -> float:
    """Largest entanglement entropy a pure n-qubit state can have across this cut: log 2**k
    (for the von Neumann and the Renyi-2 entropy alike: both peak at the maximally mixed rho).

    k is the size of the SMALLER side (subsystem or its complement): the Schmidt rank of a
    pure bipartite state is at most the smaller dimension, so S <= log(2**min(k, n - k)).
    subsystem defaults to the first n // 2 qubits, as in entanglement_entropy.
    """
    check_n_qubits(n)
    subsystem = _check_subsystem(range(n // 2) if subsystem is None else subsystem, n, "subsystem")
    return min(len(subsystem), n - len(subsystem)) * math.log(2.0)
