"""Training of potentials: config, losses, EMA, the Trainer (DDP-aware) and evaluation of checkpoints."""

from matsim.train.config import TrainConfig, load_train_config
from matsim.train.ema import ExponentialMovingAverage
from matsim.train.evaluate import ErrorAccumulator, evaluate_checkpoint, evaluate_dataset
from matsim.train.losses import WeightedLoss
from matsim.train.trainer import LRSchedule, Trainer, train_from_file

__all__ = [
    "TrainConfig",
    "load_train_config",
    "ExponentialMovingAverage",
    "ErrorAccumulator",
    "evaluate_checkpoint",
    "evaluate_dataset",
    "WeightedLoss",
    "LRSchedule",
    "Trainer",
    "train_from_file",
]
