"""Training: configs, schedule, batches, optimizer state, validation and the loop.

    from qtf_edge.train import train_run
    result = train_run(out="runs/tiny-qtf", preset_name="tiny")
"""

from qtf_edge.train.config import TrainConfig, read_config_file
from qtf_edge.train.loop import TrainingDiverged, TrainingInterrupted, TrainResult, train_run
from qtf_edge.train.schedule import learning_rate
from qtf_edge.train.validation import ValidationSet, validation_loss, validation_set

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "ValidationSet",
    "learning_rate",
    "read_config_file",
    "train_run",
    "validation_loss",
    "validation_set",
]
