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
from qtf_edge.quantum import VariationalCircuit, fidelity_kernel

INITIAL_INVERSE_TEMPERATURE = 8.0  # a fidelity gap of 1 weighs e^8 ~ 3000x: sharp, still trainable


class QuantumKernelAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_qubits = config.n_heads, config.n_qubits
        self.to_angles = nn.Linear(config.d_model, 2 * config.n_heads * config.n_qubits)
        self.query_circuit = VariationalCircuit(config.n_qubits, config.n_qlayers, config.entangler)
        self.key_circuit = VariationalCircuit(config.n_qubits, config.n_qlayers, config.entangler)
        self.log_inverse_temperature = nn.Parameter(
            torch.tensor(math.log(INITIAL_INVERSE_TEMPERATURE)))

    def states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d) -> query and key states, each (B, H, T, 2**n_qubits)."""
        B, T, _ = x.shape
        angles = self.to_angles(x).view(B, T, 2, self.n_heads, self.n_qubits).transpose(1, 3)
        return self.query_circuit(angles[:, :, 0]), self.key_circuit(angles[:, :, 1])

    def attention(self, query_states: torch.Tensor, key_states: torch.Tensor,
                  mask: torch.Tensor | None) -> torch.Tensor:
        """Row-normalised attention weights (B, H, T, S); mask (T, S) True where allowed."""
        scores = fidelity_kernel(query_states, key_states) * self.log_inverse_temperature.exp()
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return F.softmax(scores, dim=-1)
