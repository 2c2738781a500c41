"""Multi-process pretraining with DeepSpeed (ZeRO 0-3) on packed token shards.

Launch with ``deepspeed train.py ...`` or ``torchrun --nproc_per_node N train.py ...``
(RANK / WORLD_SIZE / LOCAL_RANK from the launcher; gloo on CPU, nccl on CUDA).

``apply_run_options`` is the one place where run options touch the model, in this
order: (1) activation checkpointing per block, (2) torch.compile per block,
(3) DeepSpeed wrapping (ZeRO partitioning, precision, clipping, accumulation).
The model code itself stays single-device.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from ..config_utils import to_dict
from ..data.shards import PackedLoader, TokenShards
from .config import RunConfig, build_run_config, resolve_vocab_size, vocab_size_is_explicit
from .faults import DIVERGENCE_ADVICE, StopSignals, TrainingDiverged, oom_message
from .monitor import MetricsLog, format_mfu, mfu, peak_flops
from .optim import build_optimizer, lr_at, z_loss
from .trainer import METRICS_FILE, default_model_factory

DS_DIR = "deepspeed"


def wants_distributed(cfg: RunConfig) -> bool:
    return cfg.train.distributed.enabled or int(os.environ.get("WORLD_SIZE", "1")) > 1


def build_deepspeed_config(cfg: RunConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config derived from ``train`` and ``train.distributed``."""
    tc, dc = cfg.train, cfg.train.distributed
    micro = dc.micro_batch
    if micro is None:
        if tc.batch_size % (world_size * dc.grad_accum):
            raise ValueError(
                f"train.batch_size {tc.batch_size} is not divisible by world_size {world_size} x "
                f"train.distributed.grad_accum {dc.grad_accum}; set train.distributed.micro_batch or change them"
            )
        micro = tc.batch_size // (world_size * dc.grad_accum)
    clip = dc.grad_clip if dc.grad_clip is not None else tc.grad_clip
    zero: dict[str, Any] = {"stage": dc.zero_stage}
    if dc.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if dc.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": dc.grad_accum,
        "train_batch_size": micro * dc.grad_accum * world_size,
        "gradient_clipping": clip or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": dc.precision == "bf16"},
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
    import deepspeed

    dc = cfg.train.distributed
    if dc.activation_checkpointing or dc.compile:
        for i, block in enumerate(model.blocks):
            if dc.activation_checkpointing:
                block = _Checkpointed(block)
            if dc.compile:
                block = torch.compile(block)
            model.blocks[i] = block
    optimizer = build_optimizer(model, cfg.train)
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
    import deepspeed

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    local = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def train_distributed(
    raw_config: dict[str, Any], resume: bool = False, stop_at_step: int | None = None, progress: bool = True
) -> list[float]:
    """The DeepSpeed loop on packed shards; returns the per-step mean training loss.

    Rank 0 appends every step's loss to ``run_dir/losses.jsonl``, shows a tqdm bar
    (loss, tokens/s, MFU, ETA) and writes ``run_dir/metrics.jsonl`` (train records
    every ``log_every`` steps, val records every ``eval_every`` steps when
    ``data.val_shards`` is set). SIGINT/SIGTERM on any rank: all ranks save a
    checkpoint after the current step and return. A CUDA out-of-memory error is
    re-raised naming the settings to lower.
    """
    cfg = build_run_config(raw_config)
    tc, dc = cfg.train, cfg.train.distributed
    if cfg.data.shards is None:
        raise ValueError("distributed training reads token shards: set data.shards (make them with tools/prepare_data.py)")
    rank, world, device = init_process_group()
    shards = TokenShards.open(cfg.data.shards)
    cfg = resolve_vocab_size(cfg, shards.manifest["vocab_size"], vocab_size_is_explicit(raw_config))
    ds_cfg = build_deepspeed_config(cfg, world)
    micro = ds_cfg["train_micro_batch_size_per_gpu"]
    loader = PackedLoader(shards, tc.seq_len, micro, tc.seed, rank, world)
    val_shards = TokenShards.open(cfg.data.val_shards) if cfg.data.val_shards else None
    torch.manual_seed(tc.seed)
    model = default_model_factory(cfg.model).to(device)
    flops_per_token = model.flops_per_token(tc.seq_len) if hasattr(model, "flops_per_token") else None
    engine = apply_run_options(model, cfg, world)
    run_dir = Path(tc.run_dir)
    ckpt_dir = run_dir / DS_DIR
    step = 0
    if resume and (ckpt_dir / "latest").exists():
        _, client = engine.load_checkpoint(str(ckpt_dir))
        step = int(client["step"])
        loader.load_state_dict(client["loader"][rank])
    last_saved = step
    metrics = None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1, default=str))
        metrics = MetricsLog(run_dir / METRICS_FILE, resume_step=step if step else None)
    peak = peak_flops(device)
    tokens_per_step = micro * dc.grad_accum * world * tc.seq_len
    bar = tqdm(total=tc.max_steps, initial=step, disable=not progress or rank != 0, dynamic_ncols=True, unit="step")
    losses: list[float] = []
    stop = StopSignals()
    engine.train()
    t0 = t_interval = time.time()
    interval: list[float] = []
    try:
        with stop.catch():
            while step < tc.max_steps and (stop_at_step is None or step < stop_at_step):
                try:
                    loss = _step(engine, loader, dc.grad_accum, world, device, tc.z_loss)
                except torch.OutOfMemoryError as e:
                    raise torch.OutOfMemoryError(_oom_message(cfg, world, micro, device)) from e
                losses.append(loss)
                interval.append(loss)
                step += 1
                if not math.isfinite(loss):
                    # TODO: skip the update as the single-process loop does (needs the
                    # decision before engine.step on every rank); until then stop here.
                    last = f"step_{last_saved:07d} in {ckpt_dir}" if last_saved else "none written yet"
                    raise TrainingDiverged(
                        f"training diverged at step {step}: the all-reduced loss is {loss}; this step's update "
                        f"already reached the weights, the last good checkpoint is {last}. " + DIVERGENCE_ADVICE
                    )
                now = time.time()
                tok_s = len(interval) * tokens_per_step / max(now - t_interval, 1e-9)
                step_mfu = mfu(tok_s / world, flops_per_token, peak)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}", mfu=format_mfu(step_mfu), refresh=False)
                if rank == 0:
                    with (run_dir / "losses.jsonl").open("a") as f:
                        f.write(json.dumps({"step": step, "loss": loss, "s": now - t0}) + "\n")
                    if step % tc.log_every == 0 or step == tc.max_steps:
                        metrics.log(step=step, split="train", tokens=step * tokens_per_step,
                                    loss=sum(interval) / len(interval), lr=engine.get_lr()[0],
                                    tokens_per_s=tok_s, mfu=step_mfu)
                if step % tc.log_every == 0:
                    interval.clear()
                    t_interval = time.time()
                if val_shards is not None and (step % tc.eval_every == 0 or step == tc.max_steps):
                    val_loss = evaluate(engine, val_shards, tc.seq_len, micro, tc.eval_batches, rank, world, device)
                    if rank == 0:
                        metrics.log(step=step, split="val", loss=val_loss, ppl=math.exp(min(val_loss, 700.0)))
                        bar.write(f"step {step}: val loss {val_loss:.4f}, ppl {math.exp(min(val_loss, 700.0)):.2f}")
                # Any rank's SIGTERM/SIGINT stops all of them at the same step.
                flag = torch.tensor([float(stop.requested)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                if flag.item() > 0 and step < tc.max_steps:
                    save(engine, ckpt_dir, step, loader)
                    last_saved = step
                    if rank == 0:
                        bar.write(f"stopped by a signal at step {step}; checkpoint saved; continue with --resume")
                    break
                if step % tc.save_every == 0 or step == tc.max_steps:
                    save(engine, ckpt_dir, step, loader)
                    last_saved = step
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    return losses


def _step(engine, loader: PackedLoader, grad_accum: int, world: int, device: torch.device, z_coef: float) -> float:
    """One optimizer step of ``grad_accum`` micro steps; returns the loss averaged over ranks
    (the cross-entropy plus ``z_coef`` times the z-loss)."""
    total = torch.zeros((), device=device)
    for _ in range(grad_accum):
        batch = loader.next_batch()
        labels = batch.labels.to(device)
        out = engine(batch.inputs.to(device), labels=labels, reset=batch.reset.to(device))
        loss = out.loss + z_coef * z_loss(out.logits, labels) if z_coef > 0 else out.loss
        engine.backward(loss)
        engine.step()
        total += loss.detach().float()
    dist.all_reduce(total)
    return total.item() / (grad_accum * world)


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
        out = engine(batch.inputs.to(device), labels=labels, reset=batch.reset.to(device))
        n = (labels != -100).sum()
        total += torch.stack([out.loss.detach().float() * n, n.float()])
    engine.train()
    dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()


def _oom_message(cfg: RunConfig, world: int, micro: int, device: torch.device) -> str:
    tc, dc = cfg.train, cfg.train.distributed
    memory = None
    if device.type == "cuda":
        memory = f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB allocated on rank {dist.get_rank()}"
    return oom_message(
        batch_size=tc.batch_size, seq_len=tc.seq_len, grad_accum=dc.grad_accum, micro_batch=micro, world_size=world,
        activation_checkpointing=dc.activation_checkpointing, zero_stage=dc.zero_stage,
        offload_optimizer=dc.offload_optimizer, offload_params=dc.offload_params, dtype=dc.precision, memory=memory,
    )


def save(engine, ckpt_dir: Path, step: int, loader: PackedLoader) -> None:
    """DeepSpeed checkpoint of every rank's shard; loader positions of all ranks ride along."""
    positions: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(positions, loader.state_dict())
    engine.save_checkpoint(str(ckpt_dir), tag=f"step_{step:07d}", client_state={"step": step, "loader": positions})


def consolidate(ckpt_dir: str | Path, out_file: str | Path, tag: str | None = None) -> Path:
    """Gather a ZeRO (any stage) checkpoint into one fp32 safetensors model file with
    the model's own parameter names (what ``load_checkpoint_weights`` / export read)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import save_file

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    # undo the run-option wrappers (activation checkpointing, torch.compile)
    clean = {k.replace(".block.", ".").replace("_orig_mod.", ""): v.contiguous() for k, v in state.items()}
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(clean, str(out))
    return out
