"""qscale.train: training loop, schedules, checkpoint suites and resume."""

from qscale.train.checkpoint import CheckpointInfo, list_checkpoints
from qscale.train.config import TrainConfig
from qscale.train.loop import train

__all__ = ["CheckpointInfo", "TrainConfig", "list_checkpoints", "train"]
