"""AdamW with weight decay on weight matrices only."""

from __future__ import annotations

import torch
from torch import nn

from qtf_edge.train.config import TrainConfig
from qtf_edge.tt import TTEmbedding, TTLinear


def decayed_parameter_names(model: nn.Module) -> set[str]:
    """Names of the weight matrices: Linear and Embedding weights and TT cores (the
    factors of a weight matrix).

    Not decayed: norms, biases, scalars, and the quantum and DARUAN angles. Angles are
    periodic, so pulling them towards 0 does not make a circuit "smaller", only closer to
    the identity; a 2-D shape alone does not make a tensor a weight matrix.
    """
    names = set()
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            names.add(f"{dot}weight")
        elif isinstance(module, (TTLinear, TTEmbedding)):
            names.update(f"{dot}{name}" for name, _ in module.named_parameters()
                         if name.split(".")[-2:-1] == ["cores"])
    return names


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    decayed = decayed_parameter_names(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decayed], "weight_decay": config.weight_decay},
        {"params": [p for n, p in params if n not in decayed], "weight_decay": 0.0},
    ]
    # lr is set before every step from the schedule; betas as in GPT-2 / nanoGPT.
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95))
