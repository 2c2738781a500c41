"""A single-process training run that SIGKILLs itself (run by tests/training/test_faults.py):
no handler runs, nothing is saved beyond the checkpoints already written."""

import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from tests.training.test_train import hooked_model, tiny_raw  # noqa: E402
from xlstm_lm.training import train  # noqa: E402

run_dir, kill_at = Path(sys.argv[1]), int(sys.argv[2])


def kill(call, output):
    if call == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


train(tiny_raw(run_dir, "model.dropout=0.1", "train.sample_tokens=0"), progress=False, model_factory=hooked_model(kill))
