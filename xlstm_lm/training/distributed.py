"""Multi-process training with DeepSpeed (ZeRO 0-3) on packed token shards or SFT rows.

Launch with ``deepspeed train.py ...`` or ``torchrun --nproc_per_node N train.py ...``
(RANK / WORLD_SIZE / LOCAL_RANK from the launcher; gloo on CPU, nccl on CUDA), or set
``train.distributed.enabled=true`` to run it in one process; a plain ``python train.py``
on token shards or SFT data trains in the single-process loop, without DeepSpeed.

``apply_run_options`` is the one place where run options touch the model, in this
order: (1) activation checkpointing per block, (2) torch.compile per block,
(3) DeepSpeed wrapping (ZeRO partitioning, precision, clipping, accumulation).
The model code itself stays single-device.

Data: ``data.shards`` (``PackedLoader``) or ``data.sft`` (the packed rows of
``data.sft``: prompt-masked labels, resets at every example). Either way rank r of
W reads rows ``[r*B, (r+1)*B)`` of every global micro batch of ``W*B`` rows, so the
ranks are disjoint and deterministic; the position rides in the checkpoint.
``train.init_from`` (``training.init_from``: model config, shape and tokenizer
checks) loads the source weights before ``deepspeed.initialize``; ``train.lora``
injects peft adapters after them (only the adapters train; tested with ZeRO-2).

Non-finite steps (the single-process trainer's semantics: skipped, logged,
``train.max_bad_steps`` in a row raise ``TrainingDiverged``) -- what is detected where:

* loss, every micro step on every rank: ``isfinite(loss)`` without a host sync. A
  non-finite loss is multiplied by NaN before ``engine.backward``, so every gradient
  it reaches is NaN (an infinite cross-entropy can otherwise have finite
  gradients); the other ranks' gradients then turn NaN in the reduction. All micro
  steps run forward and backward on every rank either way, so DeepSpeed's micro-step
  counter, its accumulation buffers and the collectives inside backward stay in step.
* at the accumulation boundary, after the last backward (gradients reduced) and
  before the boundary ``engine.step()``, one all-reduce of (loss sum, non-finite
  count, gradient flag) gives every rank the same view; then:

  - ZeRO-0 in fp32: DeepSpeed hands the update to our torch AdamW, which has no
    overflow check. We compute the global norm of the all-reduced (identical)
    gradients ourselves; a non-finite norm or loss skips the update by dropping the
    gradients and advancing DeepSpeed's step counters (micro/global/skipped steps,
    samples) as its own skipped step does, without calling the optimizer.
  - ZeRO-0 in bf16/fp16 (DeepSpeed wraps our AdamW in ``FP16_UnfusedOptimizer``: NaN/Inf
    scan of the gradients, then the global norm), ZeRO-1/2 (``DeepSpeedZeroOptimizer``:
    global norm of the partitioned reduced gradients, all-reduced; in bf16 only with
    ``bf16.check_grad_overflow``, set here) and ZeRO-3 (the same on its gradient
    partitions, every precision): DeepSpeed's own overflow path finds the NaN/Inf,
    returns before the optimizer update and clears the gradients and partitions;
    ``engine.was_step_applied()`` tells us. A poisoned step that DeepSpeed applied
    anyway is a RuntimeError (never seen with DeepSpeed 0.19.8, ZeRO 0-3, fp32 and bf16).

  A skipped step leaves weights and optimizer state (Adam moments and step count)
  untouched; the lr schedule still advances (as in the single-process loop, the lr
  of step s is ``lr_at(s)``). In fp16 a gradient overflow with finite losses is the
  dynamic loss scale at work: skipped and logged, not counted as a bad step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint
from safetensors.torch import save_file
from tqdm import tqdm

from ..config_utils import ConfigError, to_dict
from ..extras import require
from ..data.batch import PackedBatch
from ..data.sft import SFTBatches
from ..data.shards import PackedLoader, TokenShards
from .config import RunConfig, build_run_config, resolve_vocab_size, vocab_size_is_explicit
from .faults import BadStepGuard, RunHealth, StopSignals, TrainingDiverged, divergence_advice, oom_message
from .finetune import prepare_sft_data
from .init_from import check_tokenizer, load_init_weights, prepare_init
from .lora import apply_lora
from .launch_env import preflight
from .monitor import MetricsLog, format_mfu, json_line, mfu, peak_flops
from .optim import build_optimizer, lr_at, z_loss
from .checkpoint import MODEL_FILE, nonfinite_weights, unwrapped_name
from .trainer import METRICS_FILE, check_resume_config, default_model_factory, sample_text

DEEPSPEED_FEATURE = "the DeepSpeed training loop (data.shards, data.sft, train.distributed or a multi-process launcher)"

DS_DIR = "deepspeed"
#: Step and world size of a checkpoint, next to DeepSpeed's files in each tag folder.
RUN_STATE = "xlstm_lm_state.json"


def wants_distributed(cfg: RunConfig) -> bool:
    """Whether ``train.py`` runs this loop: under a launcher (WORLD_SIZE > 1) or with
    ``train.distributed.enabled``. Token shards and SFT data in a plain ``python train.py``
    train in the single-process loop, without DeepSpeed."""
    return cfg.train.distributed.enabled or int(os.environ.get("WORLD_SIZE", "1")) > 1


def build_deepspeed_config(cfg: RunConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config derived from ``train`` and ``train.distributed``."""
    tc, dc = cfg.train, cfg.train.distributed
    micro, accum = dc.micro_batch, dc.grad_accum
    if micro is None:
        if tc.batch_size % (world_size * accum):
            raise ConfigError(
                f"train.batch_size {tc.batch_size} is not divisible by world_size {world_size} x "
                f"train.distributed.grad_accum {accum}; set train.distributed.micro_batch or change them"
            )
        micro = tc.batch_size // (world_size * accum)
    else:
        # micro_batch given: the accumulation follows from the global batch (train.batch_size
        # stays what the run trains on, whatever the number of ranks)
        if tc.batch_size % (world_size * micro):
            raise ConfigError(
                f"train.batch_size {tc.batch_size} is not divisible by world_size {world_size} x "
                f"train.distributed.micro_batch {micro}; change one of them"
            )
        derived = tc.batch_size // (world_size * micro)
        if accum not in (1, derived):
            raise ConfigError(
                f"train.distributed.grad_accum {accum} x micro_batch {micro} x world_size {world_size} != "
                f"train.batch_size {tc.batch_size}; leave grad_accum at 1 (it is derived: {derived}) or fix the numbers"
            )
        accum = derived
    clip = dc.grad_clip if dc.grad_clip is not None else tc.grad_clip
    zero: dict[str, Any] = {"stage": dc.zero_stage}
    if dc.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if dc.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": clip or 0.0,
        "zero_optimization": zero,
        # check_grad_overflow (DeepSpeed's default) makes ZeRO-1/2 skip a bf16 step with NaN/Inf gradients
        "bf16": {"enabled": dc.precision == "bf16", "check_grad_overflow": True},
        "fp16": {"enabled": dc.precision == "fp16", "initial_scale_power": 16},
        # our AdamW with decay/no-decay groups, not DeepSpeed's fused one (which needs a compiled op)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class _Checkpointed(nn.Module):
    """Recomputes a block's forward in the backward pass (activation checkpointing)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args):
        return checkpoint(self.block, *args, use_reentrant=False)


def apply_run_options(model: nn.Module, cfg: RunConfig, world_size: int):
    """Activation checkpointing, then torch.compile, then DeepSpeed; returns the engine.

    Wrapping blocks keeps parameter names stable only when neither option is on
    (``blocks.i.block.*`` otherwise), so checkpoints are written through the engine.
    """
    deepspeed = require("deepspeed", DEEPSPEED_FEATURE)
    dc = cfg.train.distributed
    if dc.activation_checkpointing or dc.compile:
        for i, block in enumerate(model.blocks):
            if dc.activation_checkpointing:
                block = _Checkpointed(block)
            if dc.compile:
                block = torch.compile(block)
            model.blocks[i] = block
    optimizer = build_optimizer(model, cfg.train)
    # DeepSpeed drops empty groups (LoRA: no undecayed parameter); the scheduler must see the same groups.
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg.train) / cfg.train.lr)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=build_deepspeed_config(cfg, world_size)
    )
    return engine


def init_process_group() -> tuple[int, int, torch.device]:
    """Join the launcher's process group (or make a one-process one); returns rank, world size, device."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    cuda = torch.cuda.is_available()
    if not cuda:
        # DeepSpeed picks its accelerator at import time
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    deepspeed = require("deepspeed", DEEPSPEED_FEATURE)

    global _JOINED
    _JOINED = True
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    local = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


_JOINED = False


def joined_process_group() -> bool:
    """Whether this process joined a process group through ``init_process_group``."""
    return _JOINED


def exit_process(code: int) -> NoReturn:
    """End a process that ran the DeepSpeed loop: leave the process group, flush, and exit
    without the interpreter's teardown.

    After a finished ZeRO-3 run on CPU under load, a rank was seen aborting during
    interpreter finalisation (SIGABRT, "terminate called without an active exception":
    gloo worker threads still referenced by DeepSpeed's groups torn down with the
    interpreter), which a launcher reports as a failed rank although every step and
    checkpoint was written. The loop closes its metrics, progress bar and checkpoints
    itself, so nothing is lost by skipping the teardown. Used by ``train.py``.
    """
    close_process_group()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)


def close_process_group() -> None:
    """Leave the process group before the interpreter exits (a gloo/NCCL group torn down
    at interpreter exit can abort the process after a finished run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


class SFTRankLoader:
    """Rank ``rank``'s rows of every global micro batch of packed SFT rows: ``SFTBatches``
    over ``micro * world`` rows (one seeded permutation per epoch, as in the single-process
    loop), cut into the ranks' disjoint slices; resumable like ``PackedLoader``."""

    def __init__(self, rows: PackedBatch, micro: int, seed: int, rank: int, world_size: int):
        self.batches = SFTBatches(rows, micro * world_size, seed)
        self.micro, self.rank, self.world_size = micro, rank, world_size

    def next_batch(self) -> PackedBatch:
        part = self.batches.next_batch()[self.rank * self.micro : (self.rank + 1) * self.micro]
        return part

    def state_dict(self) -> dict:
        return {**self.batches.state_dict(), "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size", self.world_size) != self.world_size:
            raise ValueError(
                f"the checkpoint's loader ran on {state['world_size']} ranks, this run on {self.world_size}; "
                "resume with the same number of ranks"
            )
        self.batches.load_state_dict(state)


@dataclass
class _Data:
    loader: PackedLoader | SFTRankLoader
    vocab_size: int
    tokenizer: Any
    """The run's tokenizer (the --init-from check, the sample), loaded only when needed."""
    val: TokenShards | PackedBatch | None
    summary: str


def _load_data(cfg: RunConfig, micro: int, rank: int, world: int, run_dir: Path, resuming: bool, init) -> _Data:
    """The rank's training rows (shards or SFT), the vocabulary and the held-out set."""
    tc = cfg.train
    if cfg.data.shards is not None:
        shards = TokenShards.open(cfg.data.shards)
        loader = PackedLoader(shards, tc.seq_len, micro, tc.seed, rank, world)
        val = TokenShards.open(cfg.data.val_shards) if cfg.data.val_shards else None
        # the tokenizer: for the --init-from check and the end-of-run sample
        tokenizer = shards.tokenizer() if init is not None or tc.sample_tokens > 0 else None
        summary = (f"data: shards {cfg.data.shards}: {shards.num_tokens:,} tokens, "
                   f"{loader.num_rows:,} rows of {tc.seq_len}")
        return _Data(loader, int(shards.manifest["vocab_size"]), tokenizer, val, summary)
    # SFT: rank 0 builds (or takes the source's) tokenizer and saves it into the run dir;
    # the other ranks then load that one, so every rank tokenizes identically.
    failed: list[str | None] = [None]
    if rank == 0:
        try:
            sft = prepare_sft_data(cfg, run_dir, run_dir if resuming else None, init)
        except Exception as e:
            failed[0] = f"{type(e).__name__}: {e}"
            dist.broadcast_object_list(failed, src=0)  # the other ranks must not wait for a tokenizer
            raise
    dist.broadcast_object_list(failed, src=0)
    if failed[0] is not None:
        raise RuntimeError(f"rank 0 could not prepare the SFT data ({failed[0]})")
    if rank != 0:
        sft = prepare_sft_data(cfg, run_dir, run_dir, init)
    loader = SFTRankLoader(sft.windows.rows, micro, tc.seed, rank, world)
    return _Data(loader, sft.tokenizer.vocab_size, sft.tokenizer, sft.val, sft.summary)


def _refuse_single_process_settings(cfg: RunConfig) -> None:
    """Settings of the single-process loop that mean something else here are errors that
    name the setting to use, never silently ignored (issue 11: one meaning everywhere)."""
    tc, dc = cfg.train, cfg.train.distributed
    if tc.dtype == "bfloat16" and dc.precision != "bf16":
        raise ConfigError(
            f"train.dtype=bfloat16 with train.distributed.precision={dc.precision}: the DeepSpeed loop trains in "
            "train.distributed.precision; set train.distributed.precision=bf16"
        )
    if tc.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda, but no CUDA device is visible; use train.device=auto or cpu")
    if tc.device == "cpu" and torch.cuda.is_available():
        raise ConfigError(
            "train.device=cpu, but the DeepSpeed loop runs on the launcher's CUDA devices when there are any; "
            "hide them (CUDA_VISIBLE_DEVICES=) to train on the CPU, or use train.device=auto"
        )


def _check_precision(precision: str) -> None:
    """A clear ConfigError, before any model is built, for a precision DeepSpeed's accelerator
    lacks (its CPU accelerator: bf16 always, fp16 only where oneDNN has fp16 kernels)."""
    acc = require("deepspeed.accelerator", DEEPSPEED_FEATURE).get_accelerator()
    supported = {"fp32": True, "bf16": acc.is_bf16_supported(), "fp16": acc.is_fp16_supported()}
    if not supported[precision]:
        ok = ", ".join(k for k, v in supported.items() if v)
        raise ConfigError(
            f"train.distributed.precision={precision} is not supported by DeepSpeed's {acc.device_name()} "
            f"accelerator on this machine; use one of: {ok}"
        )


def train_distributed(
    raw_config: dict[str, Any], resume: bool = False, stop_at_step: int | None = None, progress: bool = True
) -> list[float]:
    """The DeepSpeed loop on packed shards or SFT rows; returns the per-step mean training
    loss (NaN/Inf for a step whose loss was not finite on some rank).

    Rank 0 appends every step's loss to ``run_dir/losses.jsonl`` (skipped steps with
    ``"skipped": true`` and why), shows a tqdm bar (loss, tokens/s, MFU, ETA) and
    writes ``run_dir/metrics.jsonl`` (train records every ``log_every`` steps, a
    ``bad_step`` record per skipped step, val records every ``eval_every`` steps when
    ``data.val_shards`` or SFT held-out rows exist). A step with a non-finite loss or
    gradient is skipped on all ranks (module docstring); ``train.max_bad_steps`` in a
    row raise ``TrainingDiverged`` naming the last checkpoint. SIGINT/SIGTERM on any
    rank: all ranks save a checkpoint after the current step and return. A CUDA
    out-of-memory error is re-raised naming the settings to lower.
    """
    # train.init_from: the model section comes from the source (training.init_from).
    raw_config, init = prepare_init(raw_config)
    cfg = build_run_config(raw_config)
    tc, dc = cfg.train, cfg.train.distributed
    preflight(cfg)  # accelerate settings vs the run config, wandb present: on every rank, before any work
    if cfg.data.shards is None and cfg.data.sft is None:
        raise ConfigError(
            "the DeepSpeed loop reads token shards or SFT data: set data.shards (make them with "
            "tools/prepare_data.py) or data.sft"
        )
    if cfg.data.shards is not None and cfg.data.sft is not None:
        raise ConfigError("set one of data.shards (pretraining) and data.sft (supervised fine-tuning), not both")
    _refuse_single_process_settings(cfg)
    rank, world, device = init_process_group()
    _check_precision(dc.precision)
    run_dir = Path(tc.run_dir)
    ckpt_dir = run_dir / DS_DIR
    resuming = resume and (ckpt_dir / "latest").exists()
    ds_cfg = build_deepspeed_config(cfg, world)
    micro, accum = ds_cfg["train_micro_batch_size_per_gpu"], ds_cfg["gradient_accumulation_steps"]
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    data = _load_data(cfg, micro, rank, world, run_dir, resuming, init)
    loader = data.loader
    if init is not None and not resuming:
        check_tokenizer(init, data.tokenizer, cfg.model.vocab_size)
    cfg = resolve_vocab_size(cfg, data.vocab_size, vocab_size_is_explicit(raw_config) or init is not None)
    torch.manual_seed(tc.seed)
    model = default_model_factory(cfg.model).to(device)
    if init is not None and not resuming:
        # Before deepspeed.initialize, which partitions (ZeRO-3) whatever weights the module holds.
        load_init_weights(model, init)
    flops_per_token = model.flops_per_token(tc.seq_len) if hasattr(model, "flops_per_token") else None
    if tc.lora is not None:
        # After the base weights, before the optimizer: only the adapters train (training.lora).
        model = apply_lora(model, tc.lora)
    engine = apply_run_options(model, cfg, world)
    # Our AdamW itself (ZeRO-0, fp32) has no overflow check: the loop checks the gradients.
    check_grads = not hasattr(engine.optimizer, "overflow")
    step = 0
    resumed_health = None
    if resuming:
        saved_file = run_dir / "config.json"
        if saved_file.is_file():
            saved = build_run_config(json.loads(saved_file.read_text()))
            check_resume_config(saved, cfg, ckpt_dir, saved_file)
        saved_world = _saved_world_size(ckpt_dir)
        if saved_world is not None and saved_world != world:
            raise ConfigError(
                f"cannot resume {ckpt_dir} on {world} ranks: it was saved by {saved_world}, and each rank's data "
                f"position is part of the checkpoint; resume with {saved_world} ranks, or consolidate it "
                "(tools/zero_to_model.py) and start a new run with --init-from"
            )
        _, client = engine.load_checkpoint(str(ckpt_dir), tag=resume_tag(ckpt_dir))
        step = int(client["step"])
        loader.load_state_dict(client["loader"][rank])
        resumed_health = client.get("health")
    last_saved = step
    metrics = None
    if rank == 0:
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1, default=str))
        metrics = MetricsLog.from_config(run_dir / METRICS_FILE, cfg, resume_step=step if step else None)
        print(data.summary)
        if init is not None:
            print(f"init-from: {'resumed run, source not reloaded' if resuming else 'weights of ' + init.describe()}")
    peak = peak_flops(device)
    tokens_per_step = micro * accum * world * tc.seq_len
    bar = tqdm(total=tc.max_steps, initial=step, disable=not progress or rank != 0, dynamic_ncols=True, unit="step")
    losses: list[float] = []
    guard = BadStepGuard(tc.max_bad_steps, divergence_advice(tc))
    health = RunHealth()
    health.load_state_dict(resumed_health)
    val_loss = None
    stop = StopSignals()
    engine.train()
    t0 = t_interval = time.time()
    interval: list[float] = []
    interval_steps = 0
    try:
        with stop.catch():
            while step < tc.max_steps and (stop_at_step is None or step < stop_at_step):
                try:
                    out = _step(engine, loader, accum, world, device, tc.z_loss, check_grads,
                                dc.precision == "fp16")
                except torch.OutOfMemoryError as e:
                    raise torch.OutOfMemoryError(_oom_message(cfg, world, micro, accum, device)) from e
                loss = out.loss
                losses.append(loss)
                interval_steps += 1
                step += 1
                now = time.time()
                tok_s = interval_steps * tokens_per_step / max(now - t_interval, 1e-9)
                step_mfu = mfu(tok_s / world, flops_per_token, peak)
                bar.update(1)
                health.update(loss)  # the all-reduced mean: the same on every rank
                if out.applied:
                    interval.append(loss)
                    guard.good()
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}", mfu=format_mfu(step_mfu), refresh=False)
                    record = {"step": step, "loss": loss, "s": now - t0}
                else:
                    record = {"step": step, "loss": loss if math.isfinite(loss) else None, "s": now - t0,
                              "skipped": True, "what": out.what}
                if rank == 0:
                    with (run_dir / "losses.jsonl").open("a") as f:
                        f.write(json_line(record))
                if not out.applied:
                    last = ckpt_dir / f"step_{last_saved:07d}"
                    last = last if last.exists() else None
                    if out.counts:
                        try:
                            line = guard.bad(step, out.what, last)
                        except TrainingDiverged as e:
                            # Raised on every rank alike: all saw the same all-reduced numbers.
                            if rank == 0:
                                metrics.log(step=step, split="train", kind="bad_step", what=out.what,
                                            consecutive=guard.consecutive)
                                bar.write(str(e))
                            raise
                    else:
                        line = f"step {step}: {out.what}; optimizer step skipped"
                    if rank == 0:
                        bar.write(line)
                        metrics.log(step=step, split="train", kind="bad_step", what=out.what,
                                    consecutive=guard.consecutive)
                if rank == 0 and interval and (step % tc.log_every == 0 or step == tc.max_steps):
                    metrics.log(step=step, split="train", tokens=step * tokens_per_step,
                                loss=sum(interval) / len(interval), lr=engine.get_lr()[0],
                                tokens_per_s=tok_s, mfu=step_mfu)
                if step % tc.log_every == 0:
                    interval.clear()
                    interval_steps = 0
                    t_interval = time.time()
                if data.val is not None and (step % tc.eval_every == 0 or step == tc.max_steps):
                    if isinstance(data.val, TokenShards):
                        val_loss = evaluate(engine, data.val, tc.seq_len, micro, tc.eval_batches, rank, world, device)
                    else:
                        val_loss = evaluate_rows(engine, data.val, micro, rank, world, device)
                    health.observe_val(val_loss)
                    if rank == 0:
                        metrics.log(step=step, split="val", loss=val_loss, ppl=math.exp(min(val_loss, 700.0)))
                        bar.write(f"step {step}: val loss {val_loss:.4f}, ppl {math.exp(min(val_loss, 700.0)):.2f}")
                # Any rank's SIGTERM/SIGINT stops all of them at the same step.
                flag = torch.tensor([float(stop.requested)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                if flag.item() > 0 and step < tc.max_steps:
                    if save_if_healthy(engine, ckpt_dir, step, loader, health, device, bar, metrics, tc.keep_last):
                        last_saved = step
                    if rank == 0:
                        bar.write(f"stopped by a signal at step {step}; newest checkpoint step {last_saved}; "
                                  "continue with --resume")
                    break
                if step % tc.save_every == 0 or step == tc.max_steps:
                    if save_if_healthy(engine, ckpt_dir, step, loader, health, device, bar, metrics, tc.keep_last):
                        last_saved = step
            else:
                problem = health.problem() or (
                    f"the final validation loss is {val_loss}" if val_loss is not None and not math.isfinite(val_loss) else None
                )
                if problem is not None and step >= tc.max_steps:
                    # every rank sees the same numbers, so all raise alike
                    raise TrainingDiverged(
                        f"training ended at step {step} diverged: {problem}; the last good checkpoint is "
                        f"{ckpt_dir / f'step_{last_saved:07d}' if last_saved else 'none'}. " + guard.advice
                    )
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    if step >= tc.max_steps and tc.sample_tokens > 0 and data.tokenizer is not None:
        # every rank generates (ZeRO-3 gathers weights collectively); rank 0 prints
        text = sample_text(engine.module, data.tokenizer, tc.sample_prompt, tc.sample_tokens, tc.seed, device)
        if rank == 0:
            print(f"--- sample ({tc.sample_tokens} tokens from {tc.sample_prompt!r}) ---\n{text}\n---")
    return losses


@dataclass
class StepOutcome:
    """What one optimizer step of ``_step`` did (the same on every rank)."""

    loss: float
    """Mean loss over ranks and micro steps (NaN/Inf when one of them was not finite)."""
    applied: bool
    """Whether the weights were updated."""
    what: str | None = None
    """Why the step was skipped."""
    counts: bool = True
    """Whether the skip counts toward train.max_bad_steps (not an fp16 loss-scale overflow)."""


def _batch_tensors(batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch.input_ids.to(device), batch.labels.to(device), batch.reset.to(device)


def _step(engine, loader, grad_accum: int, world: int, device: torch.device, z_coef: float,
          check_grads: bool = False, fp16: bool = False) -> StepOutcome:
    """One optimizer step of ``grad_accum`` micro steps (loss = cross-entropy plus ``z_coef``
    times the z-loss); a non-finite loss or gradient skips it on all ranks (module docstring).

    ``check_grads``: the optimizer has no overflow check of its own (ZeRO-0, fp32), so the
    gradients are checked here before ``engine.step``."""
    finite_sum = torch.zeros((), device=device)
    raw_sum = torch.zeros((), device=device)
    bad = torch.zeros((), device=device)
    nan = torch.tensor(float("nan"), device=device)
    for micro in range(grad_accum):
        inputs, labels, reset = _batch_tensors(loader.next_batch(), device)
        out = engine(inputs, labels=labels, reset=reset)
        loss = out.loss + z_coef * z_loss(out.logits, labels) if z_coef > 0 else out.loss
        value = loss.detach().float()
        finite = torch.isfinite(value)
        raw_sum += value
        finite_sum += torch.where(finite, value, 0.0)
        bad += (~finite).float()
        # x1 when finite (bit-identical gradients); NaN otherwise, so every gradient it reaches is NaN.
        engine.backward(loss * torch.where(finite, 1.0, nan).to(loss.dtype))
        if micro < grad_accum - 1:
            engine.step()  # not a boundary: DeepSpeed only counts the micro step
    grad_bad = torch.zeros((), device=device)
    if check_grads:
        # ZeRO-0 reduced the gradients in the boundary backward: identical on every rank.
        grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
        if grads:
            grad_bad = (~torch.isfinite(torch.nn.utils.get_total_norm(grads))).float()
    stats = torch.stack([finite_sum, raw_sum, bad, grad_bad])
    dist.all_reduce(stats)
    finite_sum_v, raw_sum_v, bad_v, grad_bad_v = stats.tolist()
    n = grad_accum * world
    loss_mean = raw_sum_v / n if bad_v else finite_sum_v / n
    what = None
    if bad_v:
        what = f"loss is {raw_sum_v / n} (not finite in {int(bad_v)} of {n} micro batches over {world} ranks)"
    if check_grads and (bad_v or grad_bad_v):
        _skip_boundary(engine)
        applied = False
        what = what or "gradient norm is not finite"
    else:
        engine.step()
        applied = engine.was_step_applied()
        if applied and bad_v:
            raise RuntimeError(
                f"DeepSpeed applied an update whose gradients were NaN ({what}); its optimizer "
                f"{type(engine.optimizer).__name__} did not skip it: the weights are now NaN. This loop relies "
                "on DeepSpeed's overflow check (ZeRO 1-3, bf16/fp16); report this combination"
            )
    if applied:
        return StepOutcome(loss_mean, True)
    # The single-process loop's schedule: the lr of step s is lr_at(s), skipped steps included.
    if engine.lr_scheduler is not None:
        engine.lr_scheduler.step()
    if what is None:
        if fp16:
            what = "fp16 gradient overflow (DeepSpeed lowers the loss scale)"
            return StepOutcome(loss_mean, False, what, counts=False)
        what = "gradient is not finite (NaN/Inf in the reduced gradients, DeepSpeed's overflow check)"
    return StepOutcome(loss_mean, False, what)


def _skip_boundary(engine) -> None:
    """End the accumulation boundary without an update: drop the gradients and advance
    DeepSpeed's counters as its own skipped step does (``DeepSpeedEngine._take_model_step``
    on overflow, then ``step``'s micro-step count), without calling the optimizer."""
    engine.zero_grad()
    engine.skipped_steps += 1
    engine.global_steps += 1
    engine.global_samples += engine.train_batch_size()
    engine.micro_steps += 1


@torch.no_grad()
def evaluate(engine, shards: TokenShards, seq_len: int, micro: int, batches: int, rank: int, world: int,
             device: torch.device) -> float:
    """Mean loss over the first ``batches`` global batches of the held-out shards (fixed order, seed 0)."""
    loader = PackedLoader(shards, seq_len, micro, 0, rank, world)
    engine.eval()
    total = torch.zeros(2, device=device)
    for _ in range(min(batches, loader.batches_per_epoch)):
        batch = loader.next_batch()
        labels = batch.labels.to(device)
        out = engine(batch.input_ids.to(device), labels=labels, reset=batch.reset.to(device))
        n = (labels != -100).sum()
        total += torch.stack([out.loss.detach().float() * n, n.float()])
    engine.train()
    dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()


@torch.no_grad()
def evaluate_rows(engine, rows: PackedBatch, micro: int, rank: int, world: int, device: torch.device) -> float:
    """Mean loss per trained target over all held-out SFT rows (prompt tokens masked).

    Rank r takes rows ``[b*G + r*micro, ...)`` of each global batch of ``G = micro*world``;
    a rank with no rows left in the last batch still runs a forward (weighted 0), since
    ZeRO-3 gathers parameters collectively in every forward."""
    engine.eval()
    total = torch.zeros(2, device=device)
    n_rows, global_batch = rows.shape[0], micro * world
    for start in range(0, n_rows, global_batch):
        lo = min(start + rank * micro, n_rows)
        part = rows[lo : min(lo + micro, start + global_batch, n_rows)]
        weight = 1.0
        if part.shape[0] == 0:
            part, weight = rows[:1], 0.0
        labels = part.labels.to(device)
        out = engine(part.input_ids.to(device), labels=labels, reset=part.reset.to(device))
        n = (labels != -100).sum().float() * weight
        loss = torch.where(n > 0, out.loss.detach().float() * n, 0.0)
        total += torch.stack([loss, n])
    engine.train()
    dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()


def _oom_message(cfg: RunConfig, world: int, micro: int, accum: int, device: torch.device) -> str:
    tc, dc = cfg.train, cfg.train.distributed
    memory = None
    if device.type == "cuda":
        memory = f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB allocated on rank {dist.get_rank()}"
    return oom_message(
        batch_size=tc.batch_size, seq_len=tc.seq_len, grad_accum=accum,
        micro_batch=dc.micro_batch and micro, world_size=world,
        activation_checkpointing=dc.activation_checkpointing, zero_stage=dc.zero_stage,
        offload_optimizer=dc.offload_optimizer, offload_params=dc.offload_params, dtype=dc.precision, memory=memory,
    )


def save(engine, ckpt_dir: Path, step: int, loader: PackedLoader | SFTRankLoader, health: RunHealth | None = None,
         keep_last: int | None = None) -> None:
    """DeepSpeed checkpoint of every rank's shard; loader positions of all ranks ride along.
    Then rank 0 deletes all but the newest ``keep_last`` tags (``train.keep_last``, as in
    the single-process loop; never the one ``latest`` names)."""
    positions: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(positions, loader.state_dict())
    tag = f"step_{step:07d}"
    client = {"step": step, "loader": positions, "health": health.state_dict() if health is not None else None}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client)
    save_weights_copy(engine, ckpt_dir / tag / MODEL_FILE)
    if dist.get_rank() == 0:
        # read before DeepSpeed loads anything on resume (a world-size mismatch fails there obscurely)
        (ckpt_dir / tag / RUN_STATE).write_text(json.dumps({"step": step, "world_size": len(positions)}) + "\n")
        if keep_last is not None:
            prune_tags(ckpt_dir, keep_last)
    dist.barrier()


def prune_tags(ckpt_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoint tags (never the latest)."""
    latest = (ckpt_dir / "latest").read_text().strip() if (ckpt_dir / "latest").is_file() else None
    tags = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for old in tags[: max(0, len(tags) - keep_last)]:
        if old.name != latest:
            shutil.rmtree(old)


def save_if_healthy(engine, ckpt_dir: Path, step: int, loader, health: RunHealth, device: torch.device, bar, metrics,
                    keep_last: int | None = None) -> bool:
    """``save`` unless some rank holds NaN/Inf weights or the loss is diverging (then the
    newest checkpoint stays the last healthy one, which ``--resume`` takes); returns
    whether it saved. Every rank checks its own parameters (its partition under ZeRO-3)."""
    bad = 0.0
    with torch.no_grad():
        for p in engine.module.parameters():
            local = getattr(p, "ds_tensor", p)
            if local.numel() and not bool(torch.isfinite(local).all()):
                bad = 1.0
                break
    flag = torch.tensor([bad], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    problem = "NaN/Inf weights" if flag.item() > 0 else health.problem()
    if problem is None:
        save(engine, ckpt_dir, step, loader, health, keep_last)
        return True
    if dist.get_rank() == 0:
        bar.write(f"step {step}: checkpoint not written ({problem}); the newest checkpoint stays the last healthy one")
        metrics.log(step=step, split="train", kind="checkpoint_skipped", what=problem)
    return False


def save_weights_copy(engine, path: Path) -> None:
    """Rank 0 writes the model's full weights as ``path`` (safetensors, float32, the
    model's own parameter names) beside the engine's files.

    Export, evaluation and consolidation read this copy, so they never unpickle
    DeepSpeed's files (``torch.load(weights_only=False)``), which only a resume of the
    run loads. Under ZeRO-3 the parameters are gathered one at a time (a collective:
    every rank runs this), so no rank holds more than one full parameter on the device;
    rank 0 keeps the CPU copies. The weights are the module's, i.e. in the training
    precision (exactly the fp32 master weights for fp32 runs).
    """
    zero = require("deepspeed", DEEPSPEED_FEATURE).zero
    partitioned = engine.zero_optimization_stage() == 3
    rank = dist.get_rank()
    state: dict[str, torch.Tensor] = {}
    for name, param in engine.module.named_parameters():
        if partitioned:
            with zero.GatheredParameters([param], modifier_rank=None):
                if rank == 0:
                    state[name] = param.detach().float().cpu().clone()
        elif rank == 0:
            state[name] = param.detach().float().cpu().clone()
    if rank == 0:
        clean = {unwrapped_name(k): v.contiguous() for k, v in state.items()}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(clean, str(tmp))
        os.replace(tmp, path)


def resume_tag(ckpt_dir: Path) -> str:
    """The tag a resume loads: the one ``latest`` names, or, when its weights copy holds
    NaN/Inf (damaged, or saved before saves were health-checked), the newest earlier tag
    whose copy is finite, with a warning. Rank 0 reads the copies; all ranks get its answer."""
    choice: list[Any] = [None]
    if dist.get_rank() == 0:
        latest = (ckpt_dir / "latest").read_text().strip()
        tags = sorted((p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_")), reverse=True)
        order = [latest] + [t for t in tags if t < latest]
        problems = []
        for tag in order:
            copy = ckpt_dir / tag / MODEL_FILE
            problem = nonfinite_weights(ckpt_dir / tag) if copy.is_file() else None
            if problem is None:
                choice[0] = tag
                break
            problems.append(f"{tag}: {problem}")
        if choice[0] is None:
            choice[0] = "!" + "; ".join(problems)
        elif problems:
            warnings.warn(f"{ckpt_dir}: {'; '.join(problems)}; resuming from {choice[0]}, the newest usable one", stacklevel=1)
    dist.broadcast_object_list(choice, src=0)
    if choice[0].startswith("!"):
        raise ConfigError(f"no checkpoint in {ckpt_dir} can be resumed ({choice[0][1:]}); start a new --run-dir")
    return choice[0]


def _saved_world_size(ckpt_dir: Path) -> int | None:
    latest = ckpt_dir / "latest"
    state = ckpt_dir / latest.read_text().strip() / RUN_STATE if latest.is_file() else None
    return json.loads(state.read_text())["world_size"] if state is not None and state.is_file() else None

