"""A trainable variational circuit of a few qubits, simulated exactly.

"Quantum" here is an exact classical simulation: the circuit's 2**n x 2**n unitary is
built from its parameters as an ordinary (real, orthogonal) matrix and applied with a
matmul; no quantum hardware is involved.

Circuit, for data angles a (..., n):
    |psi(a)> = V_{L-1} ... V_1 V_0 kron_q RY(a_q)|0>,
    V_l = E kron_q RY(theta[l, q])        (RY on every qubit, then the entangler ring E),
with E a ring of CNOTs (q -> q+1 mod n, applied for q = 0, 1, ..., n-1 in turn) or of CZs
on the same pairs. With two qubits the ring is the single link (0, 1): its two links
would join the same pair, and two CZs on one pair cancel.

RY and CNOT/CZ are real gates, so the whole simulation stays in float32.
Qubit 0 is the most significant bit of the state index (see gates.py).
"""

from __future__ import annotations

import torch
from torch import nn

from qtf_edge.param_cache import ParameterCache
from qtf_edge.quantum.gates import check_n_qubits, cnot_permutation, cz_signs, ry
from qtf_edge.quantum.statevector import (angle_encode, apply_cnot, apply_cz, apply_single_qubit,
                                          kron_factors, zero_state)

ENTANGLERS = ("cnot", "cz")
INIT_STD = 0.1


def ring_pairs(n: int) -> list[tuple[int, int]]:
    """(control, target) pairs of the entangler ring, in the order they are applied."""
    check_n_qubits(n)
    return [(0, 1)] if n == 2 else [(q, (q + 1) % n) for q in range(n)]


class VariationalCircuit(nn.Module):
    def __init__(self, n_qubits: int = 4, n_layers: int = 2, entangler: str = "cnot"):
        super().__init__()
        check_n_qubits(n_qubits)
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be an int >= 1, got {n_layers!r}")
        if entangler not in ENTANGLERS:
            raise ValueError(f"entangler must be one of {ENTANGLERS}, got {entangler!r}")
        self.n_qubits, self.n_layers, self.entangler = n_qubits, n_layers, entangler
        # Small random angles: every RY starts near the identity, so at init the circuit
        # is close to a fixed permutation/sign pattern of the encoded product state (the
        # data angles are not scrambled, and gradients do not vanish as they do for
        # random deep circuits), while distinct values break the symmetry between qubits.
        self.theta = nn.Parameter(INIT_STD * torch.randn(n_layers, n_qubits))
        # The whole ring as one gather (CNOT) or one sign multiply (CZ).
        # Applying gather a then gather b is gather a[b].
        ring = torch.arange(2**n_qubits) if entangler == "cnot" else torch.ones(2**n_qubits)
        for a, b in ring_pairs(n_qubits):
            if entangler == "cnot":
                ring = ring[cnot_permutation(n_qubits, a, b)]
            else:
                ring = ring * cz_signs(n_qubits, a, b)
        self.register_buffer("ring", ring, persistent=False)
        self._unitary_cache = ParameterCache()  # unitary() reused at inference (see param_cache.py)

    def extra_repr(self) -> str:
        return f"n_qubits={self.n_qubits}, n_layers={self.n_layers}, entangler={self.entangler!r}"

    def unitary(self) -> torch.Tensor:
        """(2**n, 2**n) real orthogonal matrix of the variational part, differentiable in theta.

        Without autograd it is built once and reused while theta is unchanged."""
        return self._unitary_cache.get((self.theta, self.ring), self._build_unitary)

    def _build_unitary(self) -> torch.Tensor:
        layers = kron_factors(ry(self.theta))  # (L, 2**n, 2**n): RY on every qubit
        # Entangler E on the left of each layer: (E M)[i, :] = M[ring[i], :] for the CNOT
        # permutation, ring[i] * M[i, :] for the CZ signs.
        if self.entangler == "cnot":
            layers = layers[:, self.ring, :]
        else:
            layers = self.ring[:, None] * layers
        unitary = layers[0]
        for layer in layers[1:]:
            unitary = layer @ unitary
        return unitary

    def forward(self, angles: torch.Tensor) -> torch.Tensor:
        """angles (..., n) -> state (..., 2**n): encode, then one matmul with the unitary."""
        self._check_angles(angles)
        return angle_encode(angles) @ self.unitary().mT

    def forward_gatewise(self, angles: torch.Tensor) -> torch.Tensor:
        """Same map as forward, simulated gate by gate (slow; a check on the fast path)."""
        self._check_angles(angles)
        n = self.n_qubits
        state = zero_state(n, angles.shape[:-1], angles.dtype, angles.device)
        for q in range(n):
            state = apply_single_qubit(state, ry(angles[..., q]), q, n)
        for layer_theta in self.theta:
            for q in range(n):
                state = apply_single_qubit(state, ry(layer_theta[q]), q, n)
            for a, b in ring_pairs(n):
                state = apply_cnot(state, a, b, n) if self.entangler == "cnot" else apply_cz(state, a, b, n)
        return state

    def _check_angles(self, angles: torch.Tensor) -> None:
        if angles.ndim < 1 or angles.shape[-1] != self.n_qubits:
            raise ValueError(f"angles must have shape (..., {self.n_qubits}), got {tuple(angles.shape)}")
