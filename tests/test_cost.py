import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from qtf_edge.cost import (EnergyEstimator, count_params, estimate_model_energy, model_cost,
                           total)
from qtf_edge.cost.counts import PARTS, linear_compute
from qtf_edge.model import QTensorFormer
from qtf_edge.tt import TTLinear


def counted_by_torch(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("layer", [nn.Linear(48, 96, bias=False),
                                   TTLinear(48, 96, max_rank=6, n_cores=2, bias=False),
                                   TTLinear(64, 256, max_rank=5, n_cores=3, bias=False)])
def test_projection_flops_equal_what_torch_executes(layer):
    x = torch.randn(7, layer.in_features)
    assert linear_compute(layer, 7).flops == counted_by_torch(lambda: layer(x))


def test_dense_model_flops_cover_its_matmuls_plus_a_small_elementwise_share(tiny_config):
    model = QTensorFormer(tiny_config.dense_baseline()).eval()
    ids = torch.randint(0, tiny_config.vocab_size, (1, 24))
    matmuls = counted_by_torch(lambda: model(ids))
    counted = total(model_cost(model, 24)).flops
    assert matmuls <= counted <= 1.3 * matmuls


@pytest.mark.parametrize("arch", ["qtf", "dense"])
def test_every_parameter_belongs_to_exactly_one_part(tiny_config, arch):
    config = tiny_config if arch == "qtf" else tiny_config.dense_baseline()
    model = QTensorFormer(config)
    costs = model_cost(model, 16)
    assert set(costs) == set(PARTS)
    assert sum(c.params for c in costs.values()) == count_params(model)
    assert costs["embedding"].params == (count_params(model.token_embedding)
                                         + count_params(model.position_embedding))
    assert (costs["quantum_encoder"].params > 0) == (arch == "qtf")


def test_decoding_one_token_costs_less_than_a_prefill_and_grows_with_context(tiny_config):
    model = QTensorFormer(tiny_config)
    prefill = total(model_cost(model, 32)).flops
    short, long = (total(model_cost(model, 1, ctx)).flops for ctx in (8, 32))
    assert short < long < prefill


def test_model_cost_rejects_impossible_windows(tiny_config):
    model = QTensorFormer(tiny_config)
    with pytest.raises(ValueError, match="n_tokens <= context"):
        model_cost(model, 8, 4)
    with pytest.raises(ValueError, match="context <= 32"):
        model_cost(model, 1, 33)


def test_energy_estimate_is_labelled_and_sums_its_parts(tiny_config):
    model = QTensorFormer(tiny_config)
    report = estimate_model_energy(model, EnergyEstimator("edge_mobile"), seq_len=32)
    assert report.label == "estimated" and report.per_query.label == "estimated"
    assert report.per_query.flops == total(model_cost(model, 32)).flops
    assert math.isclose(report.per_query.energy_uj,
                        sum(e.energy_uj for e in report.per_part.values()))
    assert report.per_decoded_token.energy_uj < report.per_query.energy_uj
    assert report.to_dict()["per_part"]["ffn"]["label"] == "estimated"


def test_qtf_decodes_with_less_traffic_and_energy_than_dense_at_the_small_preset():
    # Decoding one token reads every weight once: the 7x smaller QTF must move fewer bytes
    # and, on a memory-bound board, spend less energy, even though its TT chains cost
    # more FLOPs than dense matmuls at d=128.
    from qtf_edge.config import ModelConfig
    qtf = QTensorFormer(ModelConfig(d_model=128, n_layers=3, n_heads=4, d_ff=512))
    dense = QTensorFormer(qtf.config.dense_baseline())
    q, d = (estimate_model_energy(m, "rpi4").per_decoded_token for m in (qtf, dense))
    assert q.bytes_moved < d.bytes_moved / 2 and q.energy_uj < d.energy_uj
