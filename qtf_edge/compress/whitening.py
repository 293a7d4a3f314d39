"""Activation-aware truncation: discard what the layer's outputs on real inputs miss least.

Plain TT-SVD keeps the weight's largest singular values, as if every input direction
mattered alike. A layer y = x W only ever sees its calibration inputs X, and its output
error is ||X (W - W')||_F = ||S^T (W - W')||_F where X^T X = S S^T (Cholesky). So truncate
the whitened weight S^T W instead and un-whiten the result, W' = S^-T trunc(S^T W): the
discarded singular values are then output error, and for a two-core low-rank split
(tt_layout "low_rank") this is the optimal rank-r layer for those inputs (Eckart-Young on
S^T W; SVD-LLM, arXiv 2403.07378, whose method this is).

A TT matrix with several input modes can only absorb S^-T core by core if S is a
Kronecker product S_0 x S_1 x ...; for those layouts each factor comes from the Gram of
the inputs unfolded along that mode (the usual Kronecker-factored covariance estimate,
exact when the inputs' covariance is separable), so the TT structure survives and the
truncation is activation-aware up to that approximation.

The embedding table's rows are weighted by token frequency: a lookup's inputs are one-hot,
X^T X = diag(counts), so the truncation minimises the expected error of the rows looked up,
||D^1/2 (E - E')||_F. When the table is also the tied head, weighting its columns by the
head's input Gram as well (||D^1/2 (E - E') S_h||_F, the K-FAC form of the head's Fisher)
measured worse on dense `small` at 1/4 of the parameters (benchmarks/RESULTS.md): the
lookup's error, which every block sees, is not weighted by the head's inputs, so the rows
alone are whitened.

Why by hand: no library here (tensorly, torch) whitens a TT-SVD; this is a few einsums
around tensorly's TT-SVD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qtf_edge.evaluate import window_batches
from qtf_edge.tt import TTLinear

# Ridge on each Gram factor, relative to its mean diagonal (GPTQ's "percdamp" default):
# keeps the Cholesky factor invertible for directions the calibration text never excites.
DAMPING = 0.01


Factor = torch.Tensor | None  # lower-triangular (m, m), a diagonal (m,), or None: identity


@dataclass(frozen=True)
class Whitening:
    """Per-mode factors: input side (rows of W) and output side (columns); the whitened
    weight is (S_0 x S_1 x ...)^T W (R_0 x R_1 x ...). A factor is a lower-triangular
    matrix, a vector (a diagonal one: the embedding's token frequencies, where a dense
    vocab x vocab matrix would cost seconds to invert) or None (the identity)."""
    left: tuple[Factor, ...]
    right: tuple[Factor, ...]

    def whiten(self, weight: torch.Tensor, in_modes, out_modes) -> torch.Tensor:
        """weight (in, out) with these TT modes -> its whitened form (in, out), float64."""
        K = len(in_modes)
        t = weight.detach().to(torch.float64).reshape(*in_modes, *out_modes)
        for axis, factor in enumerate(self.left + self.right):
            t = _apply(t, axis, factor, input_side=axis < K)
        return t.reshape(weight.shape)

    def unwhiten(self, cores: list[torch.Tensor]) -> list[torch.Tensor]:
        """TT cores (r, m, n, r') of a whitened weight -> cores of the weight itself."""
        out = []
        for core, left, right in zip(cores, self.left, self.right):
            c = core.detach().to(torch.float64)
            c = _apply(c, 1, _inverse(left), input_side=True)
            c = _apply(c, 2, _inverse(right), input_side=False)
            out.append(c.to(core.dtype))
        return out


def _apply(t: torch.Tensor, axis: int, factor: Factor, input_side: bool) -> torch.Tensor:
    """t with the index `axis` multiplied by the factor F: t' = F^T t on the input side
    (the rows of W), t' = t F on the output side; a diagonal factor scales, None is the
    identity."""
    if factor is None:
        return t
    factor = factor.to(t.device)  # the Grams are kept on the CPU; the weight may be on a GPU
    if factor.dim() == 1:
        shape = [1] * t.dim()
        shape[axis] = -1
        return t * factor.reshape(shape)
    if input_side:
        return torch.movedim(torch.tensordot(factor.T, t, dims=([1], [axis])), 0, axis)
    return torch.movedim(torch.tensordot(t, factor, dims=([axis], [0])), -1, axis)


def _inverse(factor: Factor) -> Factor:
    if factor is None:
        return None
    return 1 / factor if factor.dim() == 1 else torch.linalg.inv(factor)


def identity_factors(modes) -> tuple[Factor, ...]:
    return (None,) * len(modes)


def kronecker_factors(gram: torch.Tensor, modes) -> tuple[torch.Tensor, ...]:
    """Cholesky factors S_k with gram ~ (S_0 S_0^T) x (S_1 S_1^T) x ... for these modes.

    gram: (n, n) with n = prod(modes), or a vector, its diagonal (the factors are then
    vectors too: diagonal square roots). Each mode's factor is the partial trace over the
    other modes; their product has gram's trace^K, so each is scaled by trace^-(K-1)/K to
    keep the total (exact for one non-trivial mode).
    """
    K = len(modes)
    diagonal = gram.dim() == 1
    gram = gram.to(torch.float64)
    trace = float(gram.sum() if diagonal else gram.diagonal().sum())
    factors = []
    for k in range(K):
        if diagonal:
            others = tuple(j for j in range(K) if j != k)
            mode_gram = gram.reshape(modes).sum(dim=others) if others else gram.reshape(modes)
        else:
            letters = "abcdefgh"[:K]
            cols = "".join("z" if j == k else letters[j] for j in range(K))
            mode_gram = torch.einsum(f"{letters}{cols}->{letters[k]}z",
                                     gram.reshape(*modes, *modes))
        mode_gram = mode_gram * trace ** (-(K - 1) / K) if trace > 0 else mode_gram
        if modes[k] > 1:  # a mode of size 1 is a scale, with no direction to regularise
            values = mode_gram if diagonal else mode_gram.diagonal()
            ridge = DAMPING * float(values.mean()) or DAMPING
            mode_gram = (mode_gram + ridge if diagonal else
                         mode_gram + ridge * torch.eye(modes[k], dtype=torch.float64))
        factors.append(mode_gram.sqrt() if diagonal else torch.linalg.cholesky(mode_gram))
    return tuple(factors)


class _Gram:
    """Running sum of x^T x (float64) over the rows of every x it sees."""

    def __init__(self):
        self.sum, self.count = None, 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        self.sum = x.T @ x if self.sum is None else self.sum + x.T @ x
        self.count += x.shape[0]

    def mean(self) -> torch.Tensor:
        return (self.sum / max(self.count, 1)).cpu()


@torch.no_grad()
def layer_whitenings(model: nn.Module, layers: dict[str, TTLinear], windows: list[list[int]],
                     batch_size: int = 8) -> dict[str, Whitening]:
    """{target layer name: Whitening} from one pass of `model` (the uncompressed source)
    over calibration windows. A target name is a block projection or an untied "head" (its
    source module's inputs), or "token_embedding.tt" (token counts)."""
    grams: dict[str, _Gram] = {}
    counts = torch.zeros(model.config.vocab_size, dtype=torch.float64)
    hooks = []

    def record(key):
        grams[key] = _Gram()
        return lambda module, args: grams[key].add(args[0])

    for name in layers:
        if name != "token_embedding.tt":
            hooks.append(model.get_submodule(name).register_forward_pre_hook(record(name)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for ids in window_batches(windows, batch_size, device):
            inputs = ids[:, :-1]
            counts += torch.bincount(inputs.reshape(-1).cpu(),
                                     minlength=counts.numel()).to(torch.float64)
            model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    result = {}
    for name, layer in layers.items():
        if name == "token_embedding.tt":
            frequency = counts / max(float(counts.sum()), 1.0)
            result[name] = Whitening(kronecker_factors(frequency, layer.in_modes),
                                     identity_factors(layer.out_modes))
        else:
            result[name] = Whitening(kronecker_factors(grams[name].mean(), layer.in_modes),
                                     identity_factors(layer.out_modes))
    return result


@torch.no_grad()
def truncate_into(layer: TTLinear, weight: torch.Tensor, ranks, whitening: Whitening | None
                  ) -> None:
    """layer's cores := TT-SVD of weight (in, out) at ranks (1, r_1, ..., 1), of its
    whitened form and un-whitened after when a Whitening is given."""
    if whitening is None:
        layer.set_from_dense(weight, ranks)
        return
    layer.set_from_dense(whitening.whiten(weight, layer.in_modes, layer.out_modes), ranks)
    for core, value in zip(layer.cores, whitening.unwhiten(list(layer.cores))):
        core.copy_(value)


def output_error(weight: torch.Tensor, approximation: torch.Tensor, inputs: torch.Tensor
                 ) -> float:
    """Relative output error ||X (W - W')||_F / ||X W||_F on inputs X (n, in)."""
    x = inputs.to(torch.float64)
    reference = x @ weight.to(torch.float64)
    return float(torch.linalg.norm(reference - x @ approximation.to(torch.float64))
                 / torch.linalg.norm(reference))

