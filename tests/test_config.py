import pytest

from qtf_edge.config import ModelConfig


def test_default_config_is_a_full_qtf_and_its_dense_baseline_has_every_switch_off():
    config = ModelConfig()
    assert not config.is_dense
    dense = config.dense_baseline()
    assert dense.is_dense
    assert (dense.d_model, dense.n_layers, dense.vocab_size) == (
        config.d_model, config.n_layers, config.vocab_size)


@pytest.mark.parametrize("changes, field", [
    ({"tt_rank": -1}, "tt_rank"),
    ({"tt_rank": 0}, "tt_rank"),
    ({"d_model": 130, "n_heads": 4}, "d_model"),
    ({"n_qubits": 11}, "n_qubits"),
    ({"n_qubits": 1}, "n_qubits"),
    ({"tt_rank": 10_000}, "tt_rank"),
    ({"tt_embedding_rank": 10_000}, "tt_embedding_rank"),
    ({"r_max": 64, "tt_rank": 16}, "r_max"),
    ({"r_min": 0}, "r_min"),
    ({"quantum_fraction": 1.5}, "quantum_fraction"),
    ({"router_threshold": "sometimes"}, "router_threshold"),
    ({"entangler": "swap"}, "entangler"),
    ({"dropout": 1.0}, "dropout"),
    ({"use_quantum_encoder": False}, "adaptive_rank"),
    ({"use_qksam": False, "adaptive_rank": False}, "use_router"),
    ({"n_layers": True}, "n_layers"),
])
def test_bad_values_name_the_field_and_the_allowed_range(changes, field):
    with pytest.raises(ValueError, match=f"'{field}' must be"):
        ModelConfig(**changes)


def test_rank_limit_is_the_largest_full_tt_rank_of_a_block_projection():
    # d_model=128 in 2 cores is 8 x 16 and d_ff=512 is 16 x 32; arranged as (16, 8) x
    # (16, 32), the 128 x 512 projection's bond splits 256 | 256: full rank 256.
    ModelConfig(tt_rank=256, r_max=16)
    with pytest.raises(ValueError, match=r"\[1, 256\]"):
        ModelConfig(tt_rank=257, r_max=16)
    # A layer clips a larger rank to its own arrangement's full rank: exact, not an error.
    from qtf_edge.tt import TTLinear, full_ranks
    layer = TTLinear(128, 128, max_rank=256, n_cores=2)
    assert layer.ranks == full_ranks(layer.in_modes, layer.out_modes)


def test_a_dense_config_of_any_width_is_valid():
    # Switched-off components are not validated: tt_rank 64 exceeds what d_model=8 allows.
    from qtf_edge.config import DENSE_SWITCHES
    config = ModelConfig(d_model=8, n_heads=2, d_ff=32, tt_rank=64, **DENSE_SWITCHES)
    assert config.is_dense
    with pytest.raises(ValueError, match="tt_rank"):
        ModelConfig(d_model=8, n_heads=2, d_ff=32, tt_rank=64)


def test_dict_round_trip_and_unknown_fields():
    config = ModelConfig(d_model=64, n_heads=2, d_ff=256, tt_rank=8, r_max=8)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown config field.*'d_modle'"):
        ModelConfig.from_dict({**config.to_dict(), "d_modle": 3})
