"""Activation-aware truncation: whitening by calibration inputs lowers output error."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from run_factory import VOCAB, tiny_model

from qtf_edge.compress.whitening import (
    Whitening,
    identity_factors,
    kronecker_factors,
    layer_whitenings,
    output_error,
    truncate_into,
)
from qtf_edge.tt import TTLinear


def correlated_inputs(n: int, features: int, seed: int, kronecker_modes=None) -> torch.Tensor:
    """Rows x = z A with a random mixing A of decaying scale (a Kronecker product of
    per-mode mixings when kronecker_modes is given): strongly anisotropic, like real
    activations."""
    generator = torch.Generator().manual_seed(seed)

    def mixing(size):
        scales = torch.logspace(0, -2, size, dtype=torch.float64)
        return torch.randn(size, size, generator=generator, dtype=torch.float64) * scales

    if kronecker_modes is None:
        a = mixing(features)
    else:
        a = mixing(kronecker_modes[0])
        for m in kronecker_modes[1:]:
            a = torch.kron(a, mixing(m))
    return torch.randn(n, features, generator=generator, dtype=torch.float64) @ a


def truncated(weight, in_modes, out_modes, ranks, whitening) -> torch.Tensor:
    layer = TTLinear(*weight.shape, in_modes=in_modes, out_modes=out_modes,
                     ranks=(1, *ranks, 1)).double()
    truncate_into(layer, weight, (1, *ranks, 1), whitening)
    return layer.to_dense().detach()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), in_features=st.sampled_from([24, 48, 64]),
       out_features=st.sampled_from([16, 40, 96]), rank_share=st.floats(0.1, 0.7))
def test_whitening_lowers_output_error_of_a_low_rank_split(seed, in_features, out_features,
                                                           rank_share):
    """For W = A B (modes (in, 1), (1, out)) the whitened truncation is the best rank-r
    layer for its inputs, so it beats plain SVD on them: a property over random layers."""
    torch.manual_seed(seed)
    weight = torch.randn(in_features, out_features, dtype=torch.float64)
    inputs = correlated_inputs(2000, in_features, seed)
    modes = ((in_features, 1), (1, out_features))
    whitening = Whitening(kronecker_factors(inputs.T @ inputs / len(inputs), modes[0]),
                          identity_factors(modes[1]))
    rank = max(1, int(rank_share * min(in_features, out_features)))
    plain = output_error(weight, truncated(weight, *modes, (rank,), None), inputs)
    whitened = output_error(weight, truncated(weight, *modes, (rank,), whitening), inputs)
    assert whitened < plain


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), rank=st.integers(2, 24))
def test_kronecker_whitening_lowers_output_error_of_a_balanced_tt_layer(seed, rank):
    """Inputs whose covariance is a Kronecker product over the TT input modes: the
    per-mode factors whiten them, and the TT layer's output error falls."""
    torch.manual_seed(seed)
    in_modes, out_modes = (8, 6), (6, 8)
    weight = torch.randn(48, 48, dtype=torch.float64)
    inputs = correlated_inputs(4000, 48, seed, kronecker_modes=in_modes)
    whitening = Whitening(kronecker_factors(inputs.T @ inputs / len(inputs), in_modes),
                          identity_factors(out_modes))
    plain = output_error(weight, truncated(weight, in_modes, out_modes, (rank,), None), inputs)
    whitened = output_error(weight, truncated(weight, in_modes, out_modes, (rank,), whitening),
                            inputs)
    assert whitened < plain


@pytest.mark.parametrize("in_modes,out_modes", [((32, 1), (1, 24)), ((4, 8), (6, 4))])
def test_at_full_rank_whitening_and_unwhitening_give_the_weight_back(in_modes, out_modes):
    weight = torch.randn(32, 24, dtype=torch.float64)
    inputs = correlated_inputs(500, 32, 0)
    right = kronecker_factors(torch.rand(24, dtype=torch.float64) + 0.1, out_modes)
    whitening = Whitening(kronecker_factors(inputs.T @ inputs, in_modes), right)
    layer = TTLinear(32, 24, in_modes=in_modes, out_modes=out_modes, max_rank=10_000).double()
    truncate_into(layer, weight, layer.ranks, whitening)
    torch.testing.assert_close(layer.to_dense().detach(), weight)


def test_a_gram_factor_is_its_cholesky_with_the_ridge_for_a_single_mode():
    inputs = correlated_inputs(300, 12, 1)
    gram = inputs.T @ inputs / 300
    factor, unit = kronecker_factors(gram, (12, 1))
    ridge = 0.01 * float(gram.diagonal().mean())
    product = torch.kron(factor @ factor.T, unit @ unit.T)
    torch.testing.assert_close(product, gram + ridge * torch.eye(12, dtype=torch.float64))


def test_layer_whitenings_read_each_layers_inputs_and_the_token_counts():
    """One pass over calibration windows: a factor per input mode of every target layer;
    the embedding's rows weighted by token frequency (tokens never seen get only the
    ridge), its columns not at all."""
    model = tiny_model(dense=True)
    layers = {"blocks.0.ffn.up": TTLinear(32, 64, in_modes=(32, 1), out_modes=(1, 64)),
              "token_embedding.tt": TTLinear(VOCAB, 32, in_modes=(VOCAB, 1), out_modes=(1, 32))}
    windows = [[5, 7, 7, 9] * 8 + [5]] * 3
    whitenings = layer_whitenings(model, layers, windows)
    up = whitenings["blocks.0.ffn.up"]
    assert [f.shape for f in up.left] == [(32, 32), (1, 1)]
    assert up.right == (None, None)  # the output side is not weighted
    rows = whitenings["token_embedding.tt"].left[0] ** 2  # a diagonal, kept as a vector
    seen = {5, 7, 9}
    assert all(rows[t] > 10 * rows[0] for t in seen)
    assert rows[7] > rows[5]  # 7 is twice as frequent as 5 in the inputs
    assert whitenings["token_embedding.tt"].right == (None, None)


@pytest.mark.parametrize("modes", [(24, 1), (4, 6)])
def test_a_diagonal_gram_kept_as_a_vector_whitens_as_the_dense_matrix_does(modes):
    """The embedding's frequencies stay a vector (a dense vocab x vocab factor would take
    seconds to invert); its whitening and un-whitening equal the dense matrix's."""
    frequency = torch.rand(24, dtype=torch.float64)
    out_modes = (1, 5) if modes[1] == 1 else (5, 1)
    weight = torch.randn(24, 5, dtype=torch.float64)
    as_vector = Whitening(kronecker_factors(frequency, modes), identity_factors(out_modes))
    as_matrix = Whitening(kronecker_factors(torch.diag(frequency), modes),
                          identity_factors(out_modes))
    assert all(f.dim() == 1 for f in as_vector.left)
    torch.testing.assert_close(as_vector.whiten(weight, modes, out_modes),
                               as_matrix.whiten(weight, modes, out_modes))
    cores = [torch.randn(1, modes[0], out_modes[0], 3, dtype=torch.float64),
             torch.randn(3, modes[1], out_modes[1], 1, dtype=torch.float64)]
    for a, b in zip(as_vector.unwhiten(cores), as_matrix.unwhiten(cores)):
        torch.testing.assert_close(a, b)
