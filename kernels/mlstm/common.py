"""Shared pieces of the mLSTM ops: the state type, input validation, dtype rules."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class MLSTMState(NamedTuple):
    """Recurrent mLSTM memory: C ``(B, H, Dqk, Dv)``, n ``(B, H, Dqk)``, m ``(B, H)``."""

    C: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else computes (and keeps state) in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def validate_inputs(q, k, v, i, f) -> None:
    """Check shapes of q, k ``(B, H, T, Dqk)``, v ``(B, H, T, Dv)``, i, f ``(B, H, T)``."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"mLSTM: {name} must be (B, H, T, D), got shape {tuple(t.shape)}")
    if q.shape != k.shape:
        raise ValueError(f"mLSTM: q {tuple(q.shape)} and k {tuple(k.shape)} must have the same shape")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"mLSTM: v {tuple(v.shape)} must match q {tuple(q.shape)} in (B, H, T)")
    for name, t in (("i", i), ("f", f)):
        if t.shape != q.shape[:3]:
            raise ValueError(
                f"mLSTM: gate pre-activation {name} must be (B, H, T) = {tuple(q.shape[:3])}, got {tuple(t.shape)}"
            )
    for name, t in (("q", q), ("k", k), ("v", v), ("i", i), ("f", f)):
        if not t.is_floating_point():
            raise TypeError(f"mLSTM: {name} must be a floating-point tensor, got {t.dtype}")


def prepare_state(state, B: int, H: int, Dqk: int, Dv: int, dtype: torch.dtype, device) -> MLSTMState:
    """Validate a given initial state (casting to ``dtype``) or build the empty memory."""
    if state is None:
        return MLSTMState(
            torch.zeros(B, H, Dqk, Dv, dtype=dtype, device=device),
            torch.zeros(B, H, Dqk, dtype=dtype, device=device),
            torch.zeros(B, H, dtype=dtype, device=device),
        )
    C, n, m = state
    expected = {"C": (B, H, Dqk, Dv), "n": (B, H, Dqk), "m": (B, H)}
    for name, t in (("C", C), ("n", n), ("m", m)):
        if tuple(t.shape) != expected[name]:
            raise ValueError(
                f"mLSTM: initial state {name} must have shape {expected[name]}, got {tuple(t.shape)}"
            )
    return MLSTMState(C.to(dtype), n.to(dtype), m.to(dtype))


def validate_reset(reset, shape: tuple[int, ...], device) -> None:
    """Check a document-boundary mask: bool of ``shape`` ((B, T) for sequences, (B,) for a step).

    ``reset[b, t] = True`` means token t starts a new document: the memory entering
    token t is replaced by the empty memory (C = 0, n = 0, m = 0).
    """
    if reset is None:
        return
    if not isinstance(reset, torch.Tensor) or reset.dtype != torch.bool:
        got = reset.dtype if isinstance(reset, torch.Tensor) else type(reset).__name__
        raise TypeError(f"mLSTM: reset must be a bool tensor of shape {tuple(shape)}, got {got}")
    if tuple(reset.shape) != tuple(shape):
        raise ValueError(f"mLSTM: reset must have shape {tuple(shape)}, got {tuple(reset.shape)}")
    if reset.device != torch.device(device):
        raise ValueError(f"mLSTM: reset is on {reset.device} but the inputs are on {device}; move it to {device}")


def exp_neg_m(m: torch.Tensor) -> torch.Tensor:
    """exp(-m) for the normaliser floor max(|n.q|, exp(-m)), capped at exp(log(max)/2).

    When every input gate so far is tiny the stabiliser m is very negative and exp(-m)
    overflows; h is ~0 either way, but the backward pass would multiply 0 by inf.
    Capping keeps exp(-m) and its square finite; it only changes h where h ~ 0.
    """
    cap = 0.5 * math.log(torch.finfo(m.dtype).max)
    return torch.exp(torch.clamp(-m, max=cap))
