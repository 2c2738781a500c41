"""Training: run configs, the training loop, checkpoints, and the train.py command line."""

from .config import DataConfig, RunConfig, TrainConfig, build_run_config, resolve_vocab_size
from .trainer import TrainingDiverged, TrainResult, Trainer, train

__all__ = [
    "DataConfig",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "build_run_config",
    "resolve_vocab_size",
    "train",
]
