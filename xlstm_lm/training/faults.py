"""Fault handling shared by the single-process and the DeepSpeed loop.

* ``StopSignals``: SIGINT (Ctrl-C) and SIGTERM (schedulers, ``kill``, preemption)
  ask the loop to save a checkpoint after the current step and return; a second
  Ctrl-C quits at once.
* ``BadStepGuard``: a non-finite loss or gradient norm skips the optimizer step; only
  ``train.max_bad_steps`` consecutive bad steps stop the run (``TrainingDiverged``).
* ``RunHealth`` and ``nonfinite_parameters``: a checkpoint is written only from finite
  weights while the training loss is not far above its best, so the newest checkpoint
  is always one training can continue from (``--resume`` takes it).
* ``oom_message``: what to lower when CUDA runs out of memory.
"""

from __future__ import annotations

import math
import signal
import threading
from contextlib import contextmanager
from typing import Any

import torch
from tqdm import tqdm


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; the message names the last good checkpoint."""


class StopSignals:
    """``requested`` becomes True on SIGINT or SIGTERM (or when the loop sets it)."""

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None

    @contextmanager
    def catch(self):
        """Install the handlers for the duration of the loop (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True
            self.signal_name = signal.Signals(signum).name
            if signum == signal.SIGINT:
                tqdm.write("\nCtrl-C: saving a checkpoint after this step (press again to quit at once)")
            else:
                tqdm.write(f"\n{self.signal_name}: saving a checkpoint after this step, then exiting")

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def divergence_advice(train_cfg: Any = None) -> str:
    """What to change after a divergence; settings already in place are not suggested."""
    clip = getattr(train_cfg, "grad_clip", None)
    tips = ["a lower train.lr or longer train.warmup_steps"]
    tips.append("gradient clipping (train.grad_clip=1.0)" if clip is None else f"tighter gradient clipping (train.grad_clip is {clip})")
    if not getattr(train_cfg, "z_loss", 0):
        tips.append("train.z_loss=1e-4")
    tips.append("float32 instead of bfloat16 (train.dtype=float32 / train.distributed.precision=fp32)")
    return (
        "Try: " + ", ".join(tips) + ", and check the data for broken or extreme tokens; then --resume (it continues "
        "from the newest checkpoint, which was written from a healthy run) with the changed settings, or start a new --run-dir"
    )


DIVERGENCE_ADVICE = divergence_advice()


class RunHealth:
    """Whether the run is worth saving: finite weights (checked by the caller with
    ``nonfinite_parameters``), a finite loss at the last step and at the last
    validation, and a training loss not far above its best.

    The loss is followed as an exponential moving average (``beta``); the run counts
    as diverging when that average exceeds ``RISE`` times its lowest value plus
    ``MARGIN`` nats. Normal training noise and the slow rise of a warm-up stay far below
    that; an exploding run (or one that jumped to a much worse region) crosses it
    within a few steps. The state rides in checkpoints, so a resumed run keeps its best.
    """

    RISE = 1.5
    MARGIN = 0.5

    def __init__(self, beta: float = 0.9):
        self.beta = beta
        self.ema: float | None = None
        self.best = math.inf
        self.last_loss = 0.0
        self.last_val = 0.0

    def update(self, loss: float) -> None:
        """Record a step's training loss (a non-finite one also counts for ``BadStepGuard``)."""
        self.last_loss = loss
        if not math.isfinite(loss):
            return
        self.ema = loss if self.ema is None else self.beta * self.ema + (1 - self.beta) * loss
        self.best = min(self.best, self.ema)

    def observe_val(self, loss: float) -> None:
        """Record a validation loss (NaN: the weights already give NaN outputs)."""
        self.last_val = loss

    def problem(self) -> str | None:
        """Why the run should not be saved now, or None."""
        if not math.isfinite(self.last_loss):
            return f"the last step's training loss is {self.last_loss}"
        if not math.isfinite(self.last_val):
            return f"the last validation loss is {self.last_val}"
        if self.ema is not None and self.ema > self.RISE * self.best + self.MARGIN:
            return (
                f"the training loss (running mean {self.ema:.4g}) is far above its best ({self.best:.4g}): "
                "the run is diverging"
            )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema, "best": self.best}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.ema, self.best = state["ema"], state["best"]


@torch.no_grad()
def nonfinite_parameters(model: torch.nn.Module, limit: int = 3) -> list[str]:
    """Names of (up to ``limit``) parameters holding NaN or Inf, with their counts."""
    bad = []
    for name, p in model.named_parameters():
        count = int((~torch.isfinite(p)).sum())
        if count:
            bad.append(f"{name} ({count} of {p.numel()} values)")
            if len(bad) >= limit:
                break
    return bad


class BadStepGuard:
    """Counts consecutive non-finite steps; raises ``TrainingDiverged`` at ``max_bad_steps``."""

    def __init__(self, max_bad_steps: int, advice: str = DIVERGENCE_ADVICE):
        self.max_bad_steps = max_bad_steps
        self.advice = advice
        self.consecutive = 0
        self.total = 0

    def good(self) -> None:
        self.consecutive = 0

    def bad(self, step: int, what: str, last_checkpoint: Any) -> str:
        """Record bad step ``step`` (1-based); returns the log line, or raises when too many in a row."""
        self.consecutive += 1
        self.total += 1
        line = (
            f"step {step}: {what}; optimizer step skipped "
            f"({self.consecutive}/{self.max_bad_steps} consecutive bad steps)"
        )
        if self.consecutive >= self.max_bad_steps:
            last = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"training diverged at step {step}: {what}; {self.consecutive} consecutive bad steps "
                f"(train.max_bad_steps={self.max_bad_steps}), weights not updated by any of them; {last}. "
                + self.advice
            )
        return line


def oom_message(
    *,
    batch_size: int,
    seq_len: int,
    grad_accum: int = 1,
    micro_batch: int | None = None,
    world_size: int = 1,
    activation_checkpointing: bool | None = None,
    zero_stage: int | None = None,
    offload_optimizer: bool | None = None,
    offload_params: bool | None = None,
    dtype: str | None = None,
    memory: str | None = None,
) -> str:
    """The advice attached to a CUDA out-of-memory error: the current values and what to lower.

    Options that do not apply to the loop are passed as None and left out.
    """
    micro = micro_batch if micro_batch is not None else max(1, batch_size // max(1, world_size * grad_accum))
    tips = [
        f"lower the sequences per micro step (now {micro}): lower train.distributed.micro_batch (the accumulation "
        f"steps, now {grad_accum}, follow to keep train.batch_size={batch_size})"
        if zero_stage is not None and micro_batch is not None
        else f"lower the sequences per micro step (now {micro}): raise train.distributed.grad_accum (now {grad_accum}) "
        f"to keep train.batch_size={batch_size}, or lower train.batch_size"
        if zero_stage is not None
        else f"lower train.batch_size (now {batch_size})",
        f"lower train.seq_len (now {seq_len})",
    ]
    if activation_checkpointing is not None and not activation_checkpointing:
        tips.append("set train.distributed.activation_checkpointing=true (recompute activations in backward)")
    if zero_stage is not None and zero_stage < 3:
        tips.append(f"raise train.distributed.zero_stage (now {zero_stage}; 3 shards parameters too)")
    if offload_optimizer is not None and not offload_optimizer and zero_stage is not None and zero_stage >= 1:
        tips.append("set train.distributed.offload_optimizer=true")
    if offload_params is not None and not offload_params and zero_stage == 3:
        tips.append("set train.distributed.offload_params=true")
    if dtype is not None and dtype in ("float32", "fp32"):
        tips.append("train in bfloat16 (train.dtype=bfloat16 / train.distributed.precision=bf16)")
    where = f" ({memory})" if memory else ""
    return "CUDA out of memory" + where + ". To fit, " + "; ".join(tips) + "."


__all__ = ["BadStepGuard", "DIVERGENCE_ADVICE", "RunHealth", "StopSignals", "TrainingDiverged", "divergence_advice",
           "nonfinite_parameters", "oom_message"]
