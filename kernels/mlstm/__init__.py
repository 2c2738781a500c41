"""mLSTM ops: recurrent (naive), parallel, chunkwise (PyTorch and Triton) and the decode step.

All forms compute the same function (tests/kernels/ prove it); pick one with
``backend``. Layout: q, k ``(B, H, T, Dqk)``, v ``(B, H, T, Dv)``, i, f ``(B, H, T)``;
state ``MLSTMState(C (B, H, Dqk, Dv), n (B, H, Dqk), m (B, H))``; optional document
boundaries ``reset`` bool ``(B, T)`` (True where a token starts a new document).

The Triton forms ``mlstm_chunkwise_triton`` and ``mlstm_step_triton`` are imported
lazily on first use, so this package imports without triton installed.
"""

from __future__ import annotations

from typing import Literal

import torch

from .chunkwise_torch import mlstm_chunkwise_torch
from .common import MLSTMState
from .naive import mlstm_recurrent, mlstm_step
from .parallel import mlstm_parallel

Backend = Literal["parallel", "chunkwise", "recurrent", "triton"]

# public name -> submodule that defines it; imported on first attribute access
_LAZY = {"mlstm_chunkwise_triton": "chunkwise_triton", "mlstm_step_triton": "step_triton"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    reset: torch.Tensor | None = None,
):
    """mLSTM over a sequence with the chosen form; see the module docstring for shapes.

    ``backend="triton"`` runs the Triton chunkwise kernels (CUDA tensors, or CPU under
    ``TRITON_INTERPRET=1``); it needs ``chunk_size`` a power of two in [16, 256].
    """
    if backend == "chunkwise":
        return mlstm_chunkwise_torch(q, k, v, i, f, initial_state, return_last_state, chunk_size, eps, reset=reset)
    if backend == "parallel":
        return mlstm_parallel(q, k, v, i, f, initial_state, return_last_state, eps, reset=reset)
    if backend == "recurrent":
        return mlstm_recurrent(q, k, v, i, f, initial_state, return_last_state, eps, reset=reset)
    if backend == "triton":
        from .chunkwise_triton import mlstm_chunkwise_triton

        return mlstm_chunkwise_triton(q, k, v, i, f, initial_state, return_last_state, chunk_size, eps, reset=reset)
    raise ValueError(
        f"unknown mLSTM backend {backend!r}; use 'chunkwise', 'parallel', 'recurrent' or 'triton'"
    )


__all__ = [
    "MLSTMState",
    "mlstm",
    "mlstm_chunkwise_torch",
    "mlstm_parallel",
    "mlstm_recurrent",
    "mlstm_step",
]
