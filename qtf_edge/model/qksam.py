"""QKSAM: attention whose scores are the fidelity of simulated query and key states.

Each token is encoded, per head, into a query state and a key state by two separate
variational circuits (their own parameters); the score of query t and key s is the
fidelity kernel K(t, s) = |<psi_q(t)|psi_k(s)>|^2, in [0, 1].

Normalisation: softmax(beta * K) over the causal row, with a learned inverse temperature
beta, rather than K / sum(K). Why: a query state may be (nearly) orthogonal to every
key, and K / sum(K) then divides by ~0; the softmax is always defined, can become as
sharp as dot-product attention as beta grows, and shares the causal-mask and KV-cache
path of classical attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from qtf_edge.config import ModelConfig
from qtf_edge.model.circuits import make_circuit
from qtf_edge.quantum import angle_encode, fidelity_kernel
from qtf_edge.quantum.precision import float32_simulation

INITIAL_INVERSE_TEMPERATURE = 8.0  # a fidelity gap of 1 weighs e^8 ~ 3000x: sharp, still trainable


class QuantumKernelAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_qubits = config.n_heads, config.n_qubits
        self.to_angles = nn.Linear(config.d_model, 2 * config.n_heads * config.n_qubits)
        self.query_circuit = make_circuit(config)
        self.key_circuit = make_circuit(config)
        self.log_inverse_temperature = nn.Parameter(
            torch.tensor(math.log(INITIAL_INVERSE_TEMPERATURE)))

    @float32_simulation
    def states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d) -> query and key states, each (B, H, T, 2**n_qubits)."""
        B, T, _ = x.shape
        # Both circuits in one go: one angle_encode over (query | key, B, H, T) and one bmm
        # with the two unitaries stacked, instead of two of each (the per-op overhead of
        # these small tensors is most of their cost).
        angles = self.to_angles(x).view(B, T, 2, self.n_heads, self.n_qubits).permute(2, 0, 3, 1, 4)
        unitaries = torch.stack((self.query_circuit.unitary(), self.key_circuit.unitary()))
        encoded = angle_encode(angles.reshape(2, B * self.n_heads * T, self.n_qubits))
        states = torch.bmm(encoded, unitaries.mT).view(2, B, self.n_heads, T, -1)
        return states[0], states[1]

    @float32_simulation
    def attention(self, query_states: torch.Tensor, key_states: torch.Tensor,
                  mask: torch.Tensor | None) -> torch.Tensor:
        """Row-normalised attention weights (B, H, T, S); mask (T, S) True where allowed."""
        inverse_temperature = self.log_inverse_temperature.exp()
        if torch.is_grad_enabled() or query_states.is_complex() or key_states.is_complex():
            scores = fidelity_kernel(query_states, key_states) * inverse_temperature
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            return F.softmax(scores, dim=-1)
        # Inference (the circuits' states are real): the same numbers in fewer passes over
        # (B, H, T, S). The kernel is overlap**2, so with the queries scaled by sqrt(beta)
        # (a pass over (B, H, T, 2**n) only) kernel, scale and mask are one addcmul,
        # additive_mask + overlap * overlap, with an additive 0 / -inf mask.
        overlap = (query_states * inverse_temperature.sqrt()) @ key_states.mT
        additive = overlap.new_zeros(()) if mask is None else torch.where(
            mask, overlap.new_zeros(()), float("-inf"))
        scores = torch.addcmul(additive, overlap, overlap)
        return F.softmax(scores, dim=-1)
