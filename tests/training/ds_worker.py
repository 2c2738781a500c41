"""One rank of the distributed test (run by tests/training/test_distributed.py under
torchrun): trains the tiny model on the given shards and prints the step losses."""

import json
import sys

import torch

torch.set_num_threads(1)

from xlstm_lm.training.distributed import train_distributed  # noqa: E402

stage, accum, shards, run_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
raw = {
    "model": {"vocab_size": 256, "d_model": 32, "num_blocks": 2, "pattern": "ms",
              "mlstm": {"num_heads": 2, "chunk_size": 8}, "slstm": {"num_heads": 2}},
    "train": {"max_steps": 3, "batch_size": 4, "seq_len": 16, "lr": 1e-2, "warmup_steps": 1, "save_every": 3,
              "run_dir": run_dir, "seed": 0, "distributed": {"enabled": True, "zero_stage": stage, "grad_accum": accum}},
    "data": {"shards": shards},
}
print("LOSSES " + json.dumps(train_distributed(raw)), flush=True)
