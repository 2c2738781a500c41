"""AdamW with decay only on weight matrices, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.BatchNorm1d)


def split_decay(model: nn.Module, decay_embeddings: bool = False) -> tuple[list[str], list[str]]:
    """Names of the parameters AdamW decays, and of those it does not.

    Not decayed: biases (any parameter whose name ends in 'bias', so also the sLSTM's
    (NH, 4, DH) gate bias), every other 1-d parameter (e.g. learnable skips), all
    parameters of norm layers (also custom ones whose class name contains 'Norm'),
    and embedding tables (including an LM head tied to one) unless
    ``decay_embeddings``. A tied (shared) parameter is listed once.
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES) or "Norm" in type(module).__name__
        if is_norm or (isinstance(module, nn.Embedding) and not decay_embeddings):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or name.rsplit(".", 1)[-1].endswith("bias") or id(p) in no_decay_ids
        (no_decay if skip else decay).append(name)
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Two AdamW groups: decayed weight matrices; everything else (see ``split_decay``) undecayed."""
    decay, no_decay = split_decay(model, decay_embeddings)
    params = dict(model.named_parameters())
    return [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; the lr is set every step by ``lr_at``."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.decay_embeddings), lr=cfg.lr, betas=tuple(cfg.betas))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    Linear warmup to ``lr`` over ``warmup_steps`` steps, then cosine or linear
    decay reaching ``min_lr`` at ``max_steps``, or constant ``lr``, or
    warmup-stable-decay (``wsd``: ``lr`` until the last ``decay_fraction`` of
    ``max_steps``, then linear down to ``min_lr`` at the last step). A pure
    function of the step, so a resume needs no scheduler state.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * cfg.max_steps))
        decay_start = max(cfg.warmup_steps, cfg.max_steps - decay_steps)
        if step < decay_start:
            return cfg.lr
        progress = min(1.0, (step + 1 - decay_start) / max(1, cfg.max_steps - decay_start))
        return cfg.lr + (cfg.min_lr - cfg.lr) * progress
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    if cfg.schedule == "cosine":
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
    return cfg.lr + (cfg.min_lr - cfg.lr) * progress


def z_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared log-partition ``logsumexp(logits)^2`` over positions with a label (!= -100).

    Added to the loss with a small coefficient (PaLM: 1e-4), it keeps the softmax
    normaliser near 1 and the logits from drifting, which stabilises large runs.
    ``logits (B, T, V)``, ``labels (B, T)``; computed in float32.
    """
    keep = labels != -100
    lse = torch.logsumexp(logits.float(), dim=-1)
    return (lse.square() * keep).sum() / keep.sum().clamp(min=1)


__all__ = ["build_optimizer", "lr_at", "param_groups", "split_decay", "z_loss"]
