"""Named model sizes with training settings that suit them: `tiny` to `xl`.

A preset is two plain dicts, ModelConfig fields and TrainConfig fields, so that a config
file and command-line flags can override any of them before either config is built.
The model's vocab_size is not here: it is the tokenizer's requested size, set by
TrainConfig.vocab_size (see qtf_edge.train.setup).

`tiny` trains in under a minute on two CPU cores on the shipped corpus (tokenizer
included) and its loss falls clearly; it exists so that the whole pipeline can be tried
on a laptop. The others are for a GPU and a real corpus (--data): on the shipped
excerpt (~0.6 MB) they overfit long before their step counts.

TT ranks stay at 16-24 as width grows: a rank-r TT projection costs more FLOPs than the
dense matmul unless r is small against d (benchmarks/RESULTS.md), and the parameter
budget is dominated by the embedding, which has its own, larger rank. `small` spends
issue 3's limit (1.9 x fewer parameters than its dense baseline, ~869 k) on embedding
rank 356: of the splits measured on WikiText-2 (benchmarks/RESULTS.md), moving it into
block TT rank 32-64 bought nothing, and rank 32 (205 k parameters) cost 2.2 x the
perplexity.
"""

from __future__ import annotations

ARCHES = ("qtf", "dense")

PRESETS: dict[str, tuple[dict, dict]] = {
    "tiny": (
        dict(context_length=64, d_model=64, n_layers=2, n_heads=2, d_ff=256,
             tt_rank=8, tt_embedding_rank=16, r_min=2, r_max=8),
        dict(vocab_size=2048, steps=300, batch_size=16, learning_rate=3e-3, min_lr=3e-4,
             warmup_steps=30, eval_every=100, eval_tokens=8192, checkpoint_every=100),
    ),
    "small": (
        dict(context_length=128, d_model=128, n_layers=3, n_heads=4, d_ff=512,
             tt_rank=16, tt_embedding_rank=356, r_min=4, r_max=16),
        dict(vocab_size=8192, steps=5_000, batch_size=32, learning_rate=2e-3, min_lr=2e-4,
             warmup_steps=200, eval_every=250, eval_tokens=32_768, checkpoint_every=1_000),
    ),
    "medium": (
        dict(context_length=256, d_model=256, n_layers=4, n_heads=8, d_ff=1024,
             tt_rank=16, tt_embedding_rank=64, r_min=4, r_max=16),
        dict(vocab_size=8192, steps=10_000, batch_size=32, learning_rate=1e-3, min_lr=1e-4,
             warmup_steps=500, eval_every=500, eval_tokens=65_536, checkpoint_every=1_000),
    ),
    "large": (
        dict(context_length=256, d_model=512, n_layers=6, n_heads=8, d_ff=2048,
             tt_rank=16, tt_embedding_rank=128, r_min=4, r_max=16),
        dict(vocab_size=16384, steps=20_000, batch_size=64, learning_rate=6e-4, min_lr=6e-5,
             warmup_steps=1_000, eval_every=1_000, eval_tokens=131_072,
             checkpoint_every=2_000),
    ),
    "xl": (
        dict(context_length=512, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
             tt_rank=24, tt_embedding_rank=192, r_min=6, r_max=24),
        dict(vocab_size=32768, steps=50_000, batch_size=64, learning_rate=3e-4, min_lr=3e-5,
             warmup_steps=2_000, eval_every=2_000, eval_tokens=262_144,
             checkpoint_every=5_000),
    ),
}


def preset(name: str) -> tuple[dict, dict]:
    """(ModelConfig kwargs, TrainConfig kwargs) of a preset, as fresh dicts to override."""
    if name not in PRESETS:
        raise ValueError(f"--preset {name!r} is unknown; known presets: {', '.join(PRESETS)}")
    model, train = PRESETS[name]
    return dict(model), dict(train)


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise ValueError(f"--arch {arch!r} is unknown; expected one of {', '.join(ARCHES)}")
    return arch
