"""Train a language model.

    python train.py                     # tiny xLSTM on the built-in corpus, CPU, a few minutes
    python train.py --config configs/X.yaml --data PATH [--run-dir DIR] [--resume] [key=value ...]

See ``python train.py --help`` and ``xlstm_lm/training/trainer.py``.
"""

import sys
from pathlib import Path

from xlstm_lm.training.cli import main

if __name__ == "__main__":
    sys.exit(main(default_config=Path(__file__).resolve().parent / "configs" / "tiny.yaml"))
