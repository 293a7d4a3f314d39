"""Statevectors of a few qubits and the gate operations on them, batched over leading dims.

"Quantum" here is an exact classical simulation: a state of n qubits is a tensor
(..., 2**n) of amplitudes (float32 while every gate is real, complex64 once a complex
gate such as RZ is applied), and every operation is an ordinary differentiable torch op.

Qubit order: qubit 0 is the MOST significant bit of the basis-state index,
    index = sum_q b_q * 2**(n - 1 - q),
so a product state is kron(psi_0, psi_1, ..., psi_{n-1}).
"""

from __future__ import annotations

import torch

from qtf_edge.quantum.gates import (check_n_qubits, check_qubit, cnot_permutation, cz_signs,
                                    z_sign_matrix)


def check_state(state: torch.Tensor, n: int) -> None:
    check_n_qubits(n)
    if state.ndim < 1 or state.shape[-1] != 2**n:
        raise ValueError(f"state must have last dim 2**n = {2**n} for n = {n}, "
                         f"got shape {tuple(state.shape)}")


def abs_squared(z: torch.Tensor) -> torch.Tensor:
    """|z|^2 elementwise, real output; avoids abs(), whose gradient is undefined at 0."""
    return torch.view_as_real(z).square().sum(-1) if z.is_complex() else z.square()


def kron_factors(factors: torch.Tensor) -> torch.Tensor:
    """Kronecker product of n matrices along dim -3: (..., n, r, c) -> (..., r**n, c**n).

    Factor 0 is the outermost (most significant) one, matching the qubit order. Built by
    n - 1 broadcast multiplies, so leading dims (tokens, layers) are never looped over.
    """
    out = factors[..., 0, :, :]
    for q in range(1, factors.shape[-3]):
        factor = factors[..., q, :, :]
        rows, cols = out.shape[-2] * factor.shape[-2], out.shape[-1] * factor.shape[-1]
        out = (out[..., :, None, :, None] * factor[..., None, :, None, :]).reshape(
            *out.shape[:-2], rows, cols)
    return out


def zero_state(n: int, batch_shape: tuple[int, ...] = (), dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
    """|0...0> of n qubits, shape (*batch_shape, 2**n)."""
    check_n_qubits(n)
    state = torch.zeros(*batch_shape, 2**n, dtype=dtype, device=device)
    state[..., 0] = 1.0
    return state


def angle_encode(angles: torch.Tensor) -> torch.Tensor:
    """Product state kron_q RY(a_q)|0> = kron_q [cos(a_q / 2), sin(a_q / 2)].

    angles (..., n) real -> state (..., 2**n), same dtype, unit norm.
    """
    check_n_qubits(angles.shape[-1] if angles.ndim else 0, "angles.shape[-1]")
    half = 0.5 * angles
    factors = torch.stack((half.cos(), half.sin()), dim=-1)  # (..., n, 2)
    return kron_factors(factors[..., None]).squeeze(-1)


def apply_single_qubit(state: torch.Tensor, gate: torch.Tensor, qubit: int, n: int) -> torch.Tensor:
    """Apply a 2x2 gate to one qubit.

    state (..., 2**n); gate (2, 2) or (..., 2, 2), broadcast against the state's leading
    dims (one gate per token is allowed). Returns (..., 2**n), complex if either input is.
    """
    check_state(state, n)
    check_qubit(qubit, n)
    if gate.shape[-2:] != (2, 2):
        raise ValueError(f"gate must have shape (..., 2, 2), got {tuple(gate.shape)}")
    dtype = torch.promote_types(state.dtype, gate.dtype)
    # Split the index into (qubits before, this qubit, qubits after) and contract the middle axis.
    split = state.to(dtype).unflatten(-1, (2**qubit, 2, 2 ** (n - 1 - qubit)))
    return torch.einsum("...ij,...ajb->...aib", gate.to(dtype), split).flatten(-3)


def apply_cnot(state: torch.Tensor, control: int, target: int, n: int) -> torch.Tensor:
    """CNOT as a gather of amplitudes: state (..., 2**n) -> (..., 2**n)."""
    check_state(state, n)
    return state[..., cnot_permutation(n, control, target).to(state.device)]


def apply_cz(state: torch.Tensor, a: int, b: int, n: int) -> torch.Tensor:
    """CZ as a sign flip of the amplitudes with qubits a and b both 1: (..., 2**n) -> (..., 2**n)."""
    check_state(state, n)
    return state * cz_signs(n, a, b).to(state.device, state.real.dtype)


def pauli_z_expectations(state: torch.Tensor, n: int) -> torch.Tensor:
    """<Z_q> = sum_i |amp_i|^2 * (+1 if bit q of i is 0 else -1), for every qubit q.

    state (..., 2**n) real or complex -> (..., n) real, as one matmul of the squared
    amplitudes with a constant (2**n, n) sign matrix.
    """
    check_state(state, n)
    probabilities = abs_squared(state)
    return probabilities @ z_sign_matrix(n).to(probabilities.device, probabilities.dtype)
