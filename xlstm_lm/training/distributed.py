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
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config_utils import to_dict
from ..data.shards import PackedLoader, TokenShards
from .config import RunConfig, build_run_config, resolve_vocab_size, vocab_size_is_explicit
from .optim import build_optimizer, lr_at
from .trainer import default_model_factory

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


def train_distributed(raw_config: dict[str, Any], resume: bool = False, stop_at_step: int | None = None) -> list[float]:
    """The DeepSpeed loop on packed shards; returns the per-step mean training loss
    (rank 0 also appends them to ``run_dir/losses.jsonl``)."""
    cfg = build_run_config(raw_config)
    tc, dc = cfg.train, cfg.train.distributed
    if cfg.data.shards is None:
        raise ValueError("distributed training reads token shards: set data.shards (make them with tools/prepare_data.py)")
    rank, world, device = init_process_group()
    shards = TokenShards.open(cfg.data.shards)
    cfg = resolve_vocab_size(cfg, shards.manifest["vocab_size"], vocab_size_is_explicit(raw_config))
    ds_cfg = build_deepspeed_config(cfg, world)
    loader = PackedLoader(shards, tc.seq_len, ds_cfg["train_micro_batch_size_per_gpu"], tc.seed, rank, world)
    torch.manual_seed(tc.seed)
    model = default_model_factory(cfg.model).to(device)
    engine = apply_run_options(model, cfg, world)
    run_dir = Path(tc.run_dir)
    ckpt_dir = run_dir / DS_DIR
    step = 0
    if resume and (ckpt_dir / "latest").exists():
        _, client = engine.load_checkpoint(str(ckpt_dir))
        step = int(client["step"])
        loader.load_state_dict(client["loader"][rank])
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1, default=str))
    losses: list[float] = []
    engine.train()
    t0 = time.time()
    while step < tc.max_steps and (stop_at_step is None or step < stop_at_step):
        total = torch.zeros((), device=device)
        for _ in range(dc.grad_accum):
            batch = loader.next_batch()
            out = engine(batch.inputs.to(device), labels=batch.labels.to(device), reset=batch.reset.to(device))
            engine.backward(out.loss)
            engine.step()
            total += out.loss.detach().float()
        dist.all_reduce(total)
        loss = total.item() / (dc.grad_accum * world)
        losses.append(loss)
        step += 1
        if rank == 0:
            with (run_dir / "losses.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, "loss": loss, "s": time.time() - t0}) + "\n")
        if step % tc.save_every == 0 or step == tc.max_steps:
            save(engine, ckpt_dir, step, loader)
    return losses


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
