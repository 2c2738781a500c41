"""mLSTM ops: recurrent (naive), parallel, chunkwise (PyTorch) and the decode step.

All forms compute the same function (tests/kernels/test_mlstm.py proves it); pick
one with ``backend``. Layout: q, k ``(B, H, T, Dqk)``, v ``(B, H, T, Dv)``,
i, f ``(B, H, T)``; state ``MLSTMState(C (B, H, Dqk, Dv), n (B, H, Dqk), m (B, H))``.
"""

from __future__ import annotations

from typing import Literal

import torch

from .chunkwise_torch import mlstm_chunkwise_torch
from .common import MLSTMState
from .naive import mlstm_recurrent, mlstm_step
from .parallel import mlstm_parallel

Backend = Literal["parallel", "chunkwise", "recurrent"]


def mlstm(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state: MLSTMState | tuple | None = None,
    return_last_state: bool = False,
    backend: Backend = "chunkwise",
    chunk_size: int = 64,
    eps: float = 1e-6,
):
    """mLSTM over a sequence with the chosen form; see the module docstring for shapes."""
    if backend == "chunkwise":
        return mlstm_chunkwise_torch(q, k, v, i, f, initial_state, return_last_state, chunk_size, eps)
    if backend == "parallel":
        return mlstm_parallel(q, k, v, i, f, initial_state, return_last_state, eps)
    if backend == "recurrent":
        return mlstm_recurrent(q, k, v, i, f, initial_state, return_last_state, eps)
    raise ValueError(f"unknown mLSTM backend {backend!r}; use 'chunkwise', 'parallel' or 'recurrent'")


__all__ = [
    "MLSTMState",
    "mlstm",
    "mlstm_chunkwise_torch",
    "mlstm_parallel",
    "mlstm_recurrent",
    "mlstm_step",
]
