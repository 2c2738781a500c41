"""Shared pieces of the mLSTM ops: the state type, input validation, dtype rules."""

from __future__ import annotations

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
