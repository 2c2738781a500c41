"""One rank of tests/tools/test_zero_export.py (run under torchrun): a tiny ZeRO-3 run of
the DeepSpeed loop on the shards given, then the trained engine's logits on fixed ids.

    zero_worker.py SHARDS RUN_DIR IDS_FILE LOGITS_FILE

The engine (DeepSpeed gathers the partitioned parameters in its forward) is captured
from ``apply_run_options``; rank 0 saves its logits of ``torch.load(IDS_FILE)``."""

import sys

import torch

torch.set_num_threads(1)

import xlstm_lm.training.distributed as ds  # noqa: E402

shards, run_dir, ids_file, logits_file = sys.argv[1:5]
engines = []
apply_run_options = ds.apply_run_options


def capture(model, cfg, world):
    engine = apply_run_options(model, cfg, world)
    engines.append(engine)
    return engine


ds.apply_run_options = capture
raw = {
    # vocab_size comes from the shards' tokenizer; tied embeddings (one parameter, two names) on purpose
    "model": {"d_model": 32, "num_blocks": 2, "pattern": "ms", "tie_embeddings": True,
              "mlstm": {"num_heads": 2, "chunk_size": 8}, "slstm": {"num_heads": 2}},
    "train": {"max_steps": 2, "batch_size": 4, "seq_len": 16, "lr": 1e-2, "warmup_steps": 1, "save_every": 2,
              "eval_every": 100, "log_every": 1, "run_dir": run_dir, "seed": 0,
              "distributed": {"enabled": True, "zero_stage": 3}},
    "data": {"shards": shards},
}
losses = ds.train_distributed(raw, progress=False)
engine = engines[0]
engine.eval()
with torch.no_grad():
    logits = engine(torch.load(ids_file)).logits
if torch.distributed.get_rank() == 0:
    torch.save(logits, logits_file)
print("LOSSES", losses, flush=True)
ds.exit_process(0)  # as train.py does: no interpreter teardown after a ZeRO-3 run
