"""The learning-rate schedule: linear warm-up, then cosine decay to min_lr."""

from __future__ import annotations

import math

from qtf_edge.train.config import TrainConfig


def learning_rate(step: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based, of config.steps).

    Steps 0..warmup-1 climb linearly to learning_rate (step 0 already moves: lr / warmup);
    then a half cosine falls from learning_rate to min_lr, reached at the last step.
    """
    peak, floor, warmup = config.learning_rate, config.min_lr, config.warmup_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = config.steps - 1 - warmup
    if decay_steps <= 0:
        return peak
    progress = min(1.0, (step - warmup) / decay_steps)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)
