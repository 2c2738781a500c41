"""One rank of the distributed test (run by tests/training/test_distributed.py under
torchrun): trains the tiny model on the given shards and prints the step losses.

Optional environment: DS_WORKER_MAX_STEPS (default 3), DS_WORKER_RESUME=1,
DS_WORKER_VAL_SHARDS (a held-out shard folder), DS_WORKER_SIGTERM_AT=N (rank 0 sends
itself SIGTERM in its N-th training forward)."""

import json
import os
import signal
import sys

import torch

torch.set_num_threads(1)

import xlstm_lm.training.distributed as ds  # noqa: E402
from xlstm_lm.training.distributed import train_distributed  # noqa: E402

if "DS_WORKER_SIGTERM_AT" in os.environ and os.environ.get("RANK") == "0":
    at, build = int(os.environ["DS_WORKER_SIGTERM_AT"]), ds.default_model_factory

    def factory(cfg):
        model, calls = build(cfg), [0]

        def hook(module, args, output):
            if module.training:
                calls[0] += 1
                if calls[0] == at:
                    os.kill(os.getpid(), signal.SIGTERM)

        model.register_forward_hook(hook)
        return model

    ds.default_model_factory = factory

stage, accum, shards, run_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
raw = {
    "model": {"vocab_size": 256, "d_model": 32, "num_blocks": 2, "pattern": "ms",
              "mlstm": {"num_heads": 2, "chunk_size": 8}, "slstm": {"num_heads": 2}},
    "train": {"max_steps": int(os.environ.get("DS_WORKER_MAX_STEPS", 3)), "batch_size": 4, "seq_len": 16, "lr": 1e-2, "warmup_steps": 1, "save_every": 3,
              "run_dir": run_dir, "seed": 0, "distributed": {"enabled": True, "zero_stage": stage, "grad_accum": accum}},
    "data": {"shards": shards, "val_shards": os.environ.get("DS_WORKER_VAL_SHARDS")},
}
raw["train"].update(eval_every=2, eval_batches=2, log_every=1)
losses = train_distributed(raw, resume=os.environ.get("DS_WORKER_RESUME") == "1", progress=False)
print("LOSSES " + json.dumps(losses), flush=True)
