"""sLSTM ops: the step-by-step reference recurrence, the decode step, and Triton kernels.

Layout: Wx ``(B, T, 4, H, Dh)`` (gate order i, f, z, o), R ``(H, Dh, 4, Dh)``,
b ``(H, 4, Dh)``, state ``SLSTMState(h, c, n, m)`` each ``(B, H, Dh)``; optional
per-token bool ``(B, T)`` ``mask`` (False: the token leaves the state unchanged) and
``reset`` (True: the token starts a new document from the empty state).

The Triton forms ``slstm_triton`` (fused sequence, forward and backward) and
``slstm_step_triton`` (decode step) are imported lazily on first use, so this package
imports without triton installed.
"""

from .naive import SLSTMState, slstm_empty_state, slstm_recurrent, slstm_step

# public name -> submodule that defines it; imported on first attribute access
_LAZY = {"slstm_triton": "triton_fused", "slstm_step_triton": "step_triton"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SLSTMState", "slstm_empty_state", "slstm_recurrent", "slstm_step"]
