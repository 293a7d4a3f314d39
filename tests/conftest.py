import pytest
import torch

from qtf_edge.config import ModelConfig
from qtf_edge.data import default_corpus


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_config() -> ModelConfig:
    """A small QTF with every component on (fast enough for unit tests)."""
    return ModelConfig(vocab_size=256, context_length=32, d_model=32, n_layers=2, n_heads=2,
                       d_ff=64, tt_rank=8, tt_embedding_rank=8, r_min=2, r_max=8)


@pytest.fixture(autouse=True)
def _token_cache(tmp_path, monkeypatch):
    """Token caches go to the test's own folder, never the user's ~/.cache."""
    monkeypatch.setenv("QTF_EDGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path):
    """(train, valid) text files: the first lines of the shipped excerpt."""
    lines = default_corpus("train").read_text(encoding="utf-8").splitlines()
    train, valid = tmp_path / "train.txt", tmp_path / "valid.txt"
    train.write_text("\n".join(lines[:60]) + "\n", encoding="utf-8")
    valid.write_text("\n".join(lines[60:80]) + "\n", encoding="utf-8")
    return train, valid


@pytest.fixture
def poison_loss(monkeypatch):
    """poison_loss(first, last): the training loss is NaN on those calls (1-based)."""
    from qtf_edge.train import loop

    def apply(first: int, last: int) -> None:
        calls = {"n": 0}
        original = loop.language_model_loss

        def poisoned(logits, targets):
            calls["n"] += 1
            loss = original(logits, targets)
            return loss * float("nan") if first <= calls["n"] <= last else loss

        monkeypatch.setattr(loop, "language_model_loss", poisoned)

    return apply
