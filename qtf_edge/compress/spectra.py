"""What truncating a layer to given TT ranks costs in accuracy and buys in parameters.

A weight W (in, out) with TT modes (m_k), (n_k) is read as the tensor with axes
(m_0 n_0, m_1 n_1, ...) whose plain tensor train is the TT matrix. Its k-th unfolding
(the first k axes against the rest) has singular values s_k; TT-SVD keeps r_k of them
at bond k, and its error obeys ||W - TT||_F^2 <= sum_k sum_{i >= r_k} s_k,i^2 (Oseledets
2011, Thm 2.2). So one SVD per bond, computed once, prices every rank choice: the
discarded energy is a sum of independent per-bond tails, and parameters are the cores'
sizes sum_k r_k m_k n_k r_{k+1}.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qtf_edge.tt.linear import interleaved_tensor, unfolding_singular_values


@dataclass(frozen=True)
class LayerSpectrum:
    name: str                          # module path, e.g. blocks.0.ffn.up
    in_modes: tuple[int, ...]
    out_modes: tuple[int, ...]
    singular_values: tuple[np.ndarray, ...]  # per internal bond, descending, float64
    norm_sq: float                     # ||W||_F^2

    @property
    def max_ranks(self) -> tuple[int, ...]:
        """Ranks per internal bond beyond which nothing more is kept (the unfoldings' ranks)."""
        return tuple(len(s) for s in self.singular_values)

    def discarded(self, ranks) -> float:
        """Sum of squared singular values dropped at these internal ranks (the TT-SVD
        error bound, squared)."""
        return float(sum(np.sum(s[r:] ** 2) for s, r in zip(self.singular_values, ranks)))

    def params(self, ranks) -> int:
        """Parameters of the TT cores at these internal ranks (bias excluded)."""
        bonds = (1, *ranks, 1)
        return sum(bonds[k] * m * n * bonds[k + 1]
                   for k, (m, n) in enumerate(zip(self.in_modes, self.out_modes)))


def layer_spectrum(name: str, weight: torch.Tensor, in_modes, out_modes) -> LayerSpectrum:
    """Singular values of each TT unfolding of weight (in, out) for these modes."""
    tensor = interleaved_tensor(weight.detach().to("cpu", torch.float64).numpy(), in_modes,
                                out_modes)
    return LayerSpectrum(name, tuple(in_modes), tuple(out_modes),
                         tuple(unfolding_singular_values(tensor)), float(np.sum(tensor ** 2)))
