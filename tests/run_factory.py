"""Tiny run folders for the eval / generate / info tests: a byte-level BPE tokenizer of
512 tokens trained on a slice of the shipped corpus, and an untrained model."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from qtf_edge import runs
from qtf_edge.config import ModelConfig
from qtf_edge.data import default_corpus, read_corpus, train_tokenizer
from qtf_edge.model import QTensorFormer

VOCAB = 512


@lru_cache(maxsize=1)
def tokenizer_json() -> str:
    lines = read_corpus(default_corpus("train"))[:200]
    tokenizer = train_tokenizer(lines, vocab_size=VOCAB)
    assert tokenizer.get_vocab_size() <= VOCAB
    return tokenizer.to_str()


def tiny_config(dense: bool = False, context_length: int = 32) -> ModelConfig:
    config = ModelConfig(vocab_size=VOCAB, context_length=context_length, d_model=32,
                         n_layers=2, n_heads=2, d_ff=64, tt_rank=8, tt_embedding_rank=8,
                         r_min=2, r_max=8)
    return config.dense_baseline() if dense else config


def tiny_model(dense: bool = False, context_length: int = 32, seed: int = 0) -> QTensorFormer:
    torch.manual_seed(seed)
    model = QTensorFormer(tiny_config(dense, context_length))
    if not dense:  # steer the router threshold off its initial value, as training would
        model.train()
        model(torch.randint(0, VOCAB, (2, context_length)))
    return model.eval()


def make_run(path: Path, dense: bool = False) -> Path:
    return runs.save_run(path, tiny_model(dense), tokenizer_json().encode(),
                         command="tests: untrained tiny model")


# Export settings small enough for tests: validation on 512 tokens, one short decode check.
FAST_EXPORT = dict(eval_tokens=512, decode_windows=1, decode_steps=4)


def export_dense_run(root: Path, target: str) -> tuple[Path, Path, dict]:
    """A dense run under root/dense exported for `target` to root/bundle: (run, bundle,
    the export report)."""
    from qtf_edge.export.pipeline import ExportOptions, export_run

    source = make_run(root / "dense", dense=True)
    report = export_run(source, root / "bundle", ExportOptions(target=target, **FAST_EXPORT))
    return source, root / "bundle", report
