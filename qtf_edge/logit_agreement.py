"""How closely one model's logits follow another's, accumulated over batches.

Distillation compares the deploy form with the simulated model (distill/agreement.py);
export compares each graph with the torch model (export/validate.py, which adds
perplexities). Both count the same three things, here: the largest and mean absolute
logit difference (in float64) and the share of positions whose most likely next token
is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LogitAgreement:
    positions: int = 0
    values: int = 0
    max_abs_diff: float = 0.0
    sum_abs_diff: float = 0.0
    top1_agree: int = 0

    def add(self, logits: np.ndarray, reference: np.ndarray) -> None:
        """logits and reference (..., vocab) for the same positions."""
        difference = np.abs(logits.astype(np.float64) - reference)
        self.max_abs_diff = max(self.max_abs_diff, float(difference.max()))
        self.sum_abs_diff += float(difference.sum())
        self.values += difference.size
        self.positions += difference.size // difference.shape[-1]
        self.top1_agree += int((logits.argmax(-1) == reference.argmax(-1)).sum())

    @property
    def top1_agreement(self) -> float | None:
        return self.top1_agree / self.positions if self.positions else None

    def to_dict(self) -> dict:
        return {"positions": self.positions, "max_abs_diff": self.max_abs_diff,
                "mean_abs_diff": self.sum_abs_diff / max(self.values, 1),
                "top1_agreement": self.top1_agreement}
