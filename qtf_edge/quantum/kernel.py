"""Fidelity kernel between simulated few-qubit states.

"Quantum" here is an exact classical simulation: states are ordinary tensors of
amplitudes, and the kernel is computed with a matmul.
"""

from __future__ import annotations

import torch

from qtf_edge.quantum.statevector import abs_squared


def fidelity_kernel(psi_q: torch.Tensor, psi_k: torch.Tensor) -> torch.Tensor:
    """K[t, s] = |<psi_q[t] | psi_k[s]>|^2, in [0, 1] for unit states.

    psi_q (..., Tq, D), psi_k (..., Tk, D), leading dims broadcast -> (..., Tq, Tk), real.
    Real states: (q @ k^T)^2; complex states: |conj(q) @ k^T|^2.
    """
    if psi_q.ndim < 2 or psi_k.ndim < 2 or psi_q.shape[-1] != psi_k.shape[-1]:
        raise ValueError(f"psi_q and psi_k must have shapes (..., Tq, D) and (..., Tk, D) with "
                         f"the same D, got {tuple(psi_q.shape)} and {tuple(psi_k.shape)}")
    return abs_squared(psi_q.conj() @ psi_k.mT)
