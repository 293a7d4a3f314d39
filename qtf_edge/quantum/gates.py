"""Gates for the few-qubit simulator: 2x2 rotation matrices and index/sign tables.

"Quantum" here is an exact classical simulation: a state of n qubits is a tensor
(..., 2**n) of amplitudes, and nothing runs on quantum hardware.

Qubit order: qubit 0 is the MOST significant bit of the basis-state index,
    index = sum_q b_q * 2**(n - 1 - q),
so a product state is kron(psi_0, psi_1, ..., psi_{n-1}).

The two-qubit entanglers (CNOT, CZ) are permutation and diagonal matrices; they are
given here as an index tensor (apply with a gather) and a sign tensor (apply with a
multiply), never as 2**n x 2**n matrices.
"""

from __future__ import annotations

import functools
import math

import torch

MIN_QUBITS, MAX_QUBITS = 2, 10  # 2**10 amplitudes per token is the most the model can afford

HADAMARD = torch.tensor([[1.0, 1.0], [1.0, -1.0]]) / math.sqrt(2.0)
PAULI_Z = torch.tensor([[1.0, 0.0], [0.0, -1.0]])


def check_n_qubits(n: int, name: str = "n_qubits") -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not MIN_QUBITS <= n <= MAX_QUBITS:
        raise ValueError(f"{name} must be an int in [{MIN_QUBITS}, {MAX_QUBITS}], got {n!r}")


def check_qubit(qubit: int, n: int, name: str = "qubit") -> None:
    if isinstance(qubit, bool) or not isinstance(qubit, int) or not 0 <= qubit < n:
        raise ValueError(f"{name} must be an int in [0, {n - 1}], got {qubit!r}")


def check_qubit_pair(n: int, a: int, b: int, names: tuple[str, str]) -> None:
    """Two distinct qubits of an n-qubit register, for a two-qubit gate."""
    check_n_qubits(n, "n")
    check_qubit(a, n, names[0])
    check_qubit(b, n, names[1])
    if a == b:
        raise ValueError(f"{names[0]} and {names[1]} must differ, both are {a}")


def cached_constant(builder):
    """Memoise a constant-tensor builder.

    Built outside inference mode: a tensor first made inside torch.inference_mode is an
    "inference tensor" that autograd refuses to save, and the cache would hand it to
    later training steps.
    """
    return functools.lru_cache(maxsize=None)(torch.inference_mode(False)(builder))


@cached_constant
@functools.lru_cache(maxsize=None)
def _bit_table(n: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple((i >> (n - 1 - q)) & 1 for q in range(n)) for i in range(2**n))


def basis_bits(n: int) -> torch.Tensor:
    """(2**n, n) int64: bits[i, q] = value of qubit q in basis state i (qubit 0 = MSB).

    Built from Python integers, so that a traced graph holds it as a constant (shift ops
    on index tensors have no TFLite lowering)."""
    return torch.tensor(_bit_table(n), dtype=torch.int64)


def ry(theta: torch.Tensor) -> torch.Tensor:
    """RY(theta) = exp(-i theta Y / 2) = [[c, -s], [s, c]], c, s = cos, sin(theta / 2).

    theta (...) -> (..., 2, 2), real (same dtype as theta).
    """
    half = 0.5 * theta
    c, s = half.cos(), half.sin()
    return torch.stack((c, -s, s, c), dim=-1).unflatten(-1, (2, 2))


def rz(theta: torch.Tensor) -> torch.Tensor:
    """RZ(theta) = exp(-i theta Z / 2) = diag(e^{-i theta/2}, e^{+i theta/2}).

    theta (...) real -> (..., 2, 2) complex (complex64 for float32 theta).
    """
    phase = torch.polar(torch.ones_like(theta), 0.5 * theta)
    zero = torch.zeros_like(phase)
    return torch.stack((phase.conj(), zero, zero, phase), dim=-1).unflatten(-1, (2, 2))


@cached_constant
def cnot_permutation(n: int, control: int, target: int) -> torch.Tensor:
    """(2**n,) int64 index p with CNOT|psi> = psi[..., p].

    CNOT flips the target bit where the control bit is 1; it is its own inverse, so the
    new amplitude of state i is the old amplitude of state CNOT(i).
    """
    check_qubit_pair(n, control, target, ("control", "target"))
    bits = basis_bits(n)
    return torch.arange(2**n) ^ (bits[:, control] << (n - 1 - target))


@cached_constant
def cz_signs(n: int, a: int, b: int) -> torch.Tensor:
    """(2**n,) float32 of +-1 with CZ|psi> = psi * signs: -1 where qubits a and b are both 1."""
    check_qubit_pair(n, a, b, ("a", "b"))
    bits = basis_bits(n)
    return 1.0 - 2.0 * (bits[:, a] & bits[:, b]).float()


@cached_constant
def z_sign_matrix(n: int) -> torch.Tensor:
    """(2**n, n) float32: eigenvalue of Z_q on basis state i, +1 for bit 0 and -1 for bit 1."""
    return 1.0 - 2.0 * basis_bits(n).float()
