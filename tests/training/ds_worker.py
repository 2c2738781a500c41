"""One rank of the distributed tests (run under torchrun, or as a plain one-process
script): trains the tiny model with ``train_distributed`` and prints the step losses.

    ds_worker.py STAGE GRAD_ACCUM SHARDS RUN_DIR

Optional environment: DS_WORKER_MAX_STEPS (default 3), DS_WORKER_RESUME=1,
DS_WORKER_VAL_SHARDS (a held-out shard folder), DS_WORKER_SIGTERM_AT=N (rank 0 sends
itself SIGTERM in its N-th training forward), and

* DS_WORKER_OVERRIDES: a JSON object merged (per section) into the run config;
* DS_WORKER_POISON: a JSON list of {"rank": r, "calls": [n, ...], "kind": "loss"|"grad"}:
  in rank r's n-th training forward (1-based, one per micro step) the loss becomes NaN
  ("loss"), or stays finite with an infinite gradient ("grad");
* DS_WORKER_RUNS: a JSON list of runs in this one process, each {"name": ..., "overrides":
  {...}, "poison": [...], "resume": bool, "sigterm_at": n, "dir": name}; a run trains in
  RUN_DIR/<dir or name> (the variables above are then ignored except DS_WORKER_MAX_STEPS
  and DS_WORKER_VAL_SHARDS; the exit code is 0 unless a run raised something else).

Every run writes trace_rank{r}.json into its run dir (RUN_DIR/<name>.trace_rank{r}.json
with DS_WORKER_RUNS): its losses, the weights' sha256 before every training forward
(the rank's ZeRO-3 partition, else the whole module) and after the run (also of the
frozen parameters alone), the lr at each forward, DeepSpeed's step counters, the Adam
step count and the TrainingDiverged or ConfigError message, if any (exit code 3).
"""

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

import xlstm_lm.training.distributed as ds  # noqa: E402
from xlstm_lm.training.distributed import train_distributed  # noqa: E402
from xlstm_lm.config_utils import ConfigError  # noqa: E402
from xlstm_lm.training.faults import TrainingDiverged  # noqa: E402


def weights_hash(params) -> str:
    sha = hashlib.sha256()
    for p in params:
        t = p.ds_tensor if hasattr(p, "ds_tensor") else p
        sha.update(t.detach().float().cpu().numpy().tobytes())
    return sha.hexdigest()


def adam_steps(engine) -> int:
    steps = [int(s["step"]) for s in engine.basic_optimizer.state.values() if "step" in s]
    return max(steps, default=0)


def run(raw: dict, trace_file: Path, resume: bool, poison: list, sigterm_at: int | None) -> int:
    rank = int(os.environ.get("RANK", "0"))
    trace = {"hashes": [], "lrs": [], "error": None}
    build, engines = ds.default_model_factory, []
    mine = [p for p in poison if p["rank"] == rank]

    def factory(cfg):
        model, calls = build(cfg), [0]

        def before(module, args):
            if module.training:
                trace["hashes"].append(weights_hash(module.parameters()))
                if engines:
                    trace["lrs"].append(engines[0].get_lr()[0])

        def after(module, args, kwargs, output):
            if not module.training:
                return
            calls[0] += 1
            for p in mine:
                if calls[0] in p["calls"]:
                    if p["kind"] == "loss":
                        output.loss = output.loss * float("nan")
                    else:
                        output.loss.register_hook(lambda g: g * float("inf"))
            if sigterm_at is not None and rank == 0 and calls[0] == sigterm_at:
                os.kill(os.getpid(), signal.SIGTERM)

        model.register_forward_pre_hook(before)
        model.register_forward_hook(after, with_kwargs=True)
        trace["model"] = model
        return model

    def capture(model, cfg, world):
        engines.append(apply(model, cfg, world))
        return engines[0]

    apply = ds.apply_run_options
    ds.default_model_factory, ds.apply_run_options = factory, capture
    code = 0
    try:
        trace["losses"] = train_distributed(raw, resume=resume, progress=False)
    except (TrainingDiverged, ConfigError) as e:
        trace["error"], trace["losses"], code = f"{type(e).__name__}: {e}", None, 3
    finally:
        ds.default_model_factory, ds.apply_run_options = build, apply
    model = trace.pop("model", None)
    if engines:
        engine = engines[0]
        frozen = [p for p in model.parameters() if not p.requires_grad]
        trace.update(final_hash=weights_hash(model.parameters()), frozen_hash=weights_hash(frozen),
                     adam_steps=adam_steps(engine),
                     global_steps=engine.global_steps, micro_steps=engine.micro_steps,
                     skipped_steps=engine.skipped_steps)
    trace_file.parent.mkdir(parents=True, exist_ok=True)
    trace_file.with_name(trace_file.name.format(rank=rank)).write_text(json.dumps(trace))
    if trace["losses"] is not None:
        print("LOSSES " + json.dumps(trace["losses"]), flush=True)
    else:
        print("FAILED " + trace["error"], flush=True)
    return code


def merge(raw: dict, overrides: dict) -> dict:
    out = dict(raw)
    for key, value in overrides.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


stage, accum, shards, run_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
base = {
    "model": {"vocab_size": 256, "d_model": 32, "num_blocks": 2, "pattern": "ms",
              "mlstm": {"num_heads": 2, "chunk_size": 8}, "slstm": {"num_heads": 2}},
    "train": {"max_steps": int(os.environ.get("DS_WORKER_MAX_STEPS", 3)), "batch_size": 4, "seq_len": 16, "lr": 1e-2,
              "warmup_steps": 1, "save_every": 3, "run_dir": str(run_dir), "seed": 0, "eval_every": 2,
              "eval_batches": 2, "log_every": 1,
              "distributed": {"enabled": True, "zero_stage": stage, "grad_accum": accum}},
    "data": {"shards": shards, "val_shards": os.environ.get("DS_WORKER_VAL_SHARDS")},
}
if "DS_WORKER_RUNS" in os.environ:
    # An expected TrainingDiverged / ConfigError is in the run's trace; the next run goes on.
    code = 0
    for spec in json.loads(os.environ["DS_WORKER_RUNS"]):
        raw = merge(base, {"train": {"run_dir": str(run_dir / spec.get("dir", spec["name"]))}})
        run(merge(raw, spec.get("overrides", {})), run_dir / (spec["name"] + ".trace_rank{rank}.json"),
            spec.get("resume", False), spec.get("poison", []), spec.get("sigterm_at"))
else:
    raw = merge(base, json.loads(os.environ.get("DS_WORKER_OVERRIDES", "{}")))
    sigterm = int(os.environ["DS_WORKER_SIGTERM_AT"]) if "DS_WORKER_SIGTERM_AT" in os.environ else None
    code = run(raw, Path(raw["train"]["run_dir"]) / "trace_rank{rank}.json", os.environ.get("DS_WORKER_RESUME") == "1",
               json.loads(os.environ.get("DS_WORKER_POISON", "[]")), sigterm)
ds.exit_process(code)  # as train.py does
