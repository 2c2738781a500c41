"""Train a language model.

    python train.py                     # tiny xLSTM on the built-in corpus, CPU, a few minutes
    python train.py --config configs/X.yaml --data PATH [--run-dir DIR] [--resume] [key=value ...]

See ``python train.py --help`` and ``xlstm_lm/training/trainer.py``.
"""

import sys
from pathlib import Path

from xlstm_lm.training.cli import main

if __name__ == "__main__":
    code = main(default_config=Path(__file__).resolve().parent / "configs" / "tiny.yaml")
    distributed = sys.modules.get("xlstm_lm.training.distributed")
    if distributed is not None and distributed.joined_process_group():
        distributed.exit_process(code)  # skips a teardown that can abort a finished rank (see there)
    sys.exit(code)
