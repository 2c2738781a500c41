"""Training: run configs, the training loop, checkpoints, and the train.py command line.

The names below are imported on first use, so modules that only need a piece of
``training`` (``training.checkpoint`` for the checkpoint layout, ``training.lora``)
do not pull in the training loop.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "DataConfig": ".config",
    "RunConfig": ".config",
    "TrainConfig": ".config",
    "build_run_config": ".config",
    "resolve_vocab_size": ".config",
    "TrainingDiverged": ".faults",
    "TrainResult": ".trainer",
    "Trainer": ".trainer",
    "train": ".trainer",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
