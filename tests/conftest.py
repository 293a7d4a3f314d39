import pytest
import torch

from qtf_edge.config import ModelConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_config() -> ModelConfig:
    """A small QTF with every component on (fast enough for unit tests)."""
    return ModelConfig(vocab_size=256, context_length=32, d_model=32, n_layers=2, n_heads=2,
                       d_ff=64, tt_rank=8, tt_embedding_rank=8, r_min=2, r_max=8)
