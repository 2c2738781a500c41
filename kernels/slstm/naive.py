"""sLSTM, recurrent form: the step-by-step reference with exponential gating.

One step per batch element and head (xLSTM paper, Sec. 2.2, stabilised as in App. A.2):

    [i, f, z, o]_t = W x_t + R h_{t-1} + b            # R block-diagonal: one (Dh x 4Dh) block per head
    log f'_t = logsigmoid(f_t)   (forget_gate="sigmoid")   or   f_t   (forget_gate="exp")
    m_t = max(log f'_t + m_{t-1}, i_t)
    i'_t = exp(i_t - m_t),   f'_t = exp(log f'_t + m_{t-1} - m_t)
    c_t = f'_t c_{t-1} + i'_t tanh(z_t)
    n_t = f'_t n_{t-1} + i'_t
    h_t = sigmoid(o_t) * c_t / n_t

The empty state is h = c = n = 0 and m = -inf, so the first step sets m_1 = i_1
(the reference ``xlstm`` code does the same by special-casing n == 0). n_t >= 1
holds at every step (one of i'_t, f'_t is 1), so the division is always safe.

Per-token controls of a sequence, both optional bool ``(B, T)``, applied in this order:

* ``reset[b, t] = True``: token t starts a new document; the state entering it is
  replaced by the empty state (so R h_{t-1} = 0 and m_{t-1} = -inf). A packed row of
  documents gives exactly the outputs of running each document on its own.
* ``mask[b, t] = False``: the token does not update the state (padding); the state
  after it is the state entering it (after any reset) and its output is that h.

Layout: gate pre-activations from the input ``Wx (B, T, 4, H, Dh)`` in gate order
(i, f, z, o); recurrent weights ``R (H, Dh_in, 4, Dh_out)``; bias ``b (H, 4, Dh)``;
state ``SLSTMState(h, c, n, m)``, each ``(B, H, Dh)``; outputs ``(B, T, H, Dh)``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

ForgetGate = Literal["sigmoid", "exp"]


class SLSTMState(NamedTuple):
    """sLSTM state: hidden h, cell c, normaliser n, stabiliser m; each ``(B, H, Dh)``."""

    h: torch.Tensor
    c: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def slstm_empty_state(B: int, H: int, Dh: int, dtype=torch.float32, device=None) -> SLSTMState:
    """The empty sLSTM state (h = c = n = 0, m = -inf)."""
    z = torch.zeros(B, H, Dh, dtype=dtype, device=device)
    return SLSTMState(z, z.clone(), z.clone(), torch.full_like(z, float("-inf")))


def validate_token_flags(flag: torch.Tensor | None, name: str, shape: tuple[int, ...], device) -> None:
    """Check an optional per-token bool tensor (``mask`` or ``reset``) of ``shape``."""
    if flag is None:
        return
    if not isinstance(flag, torch.Tensor) or flag.dtype != torch.bool:
        got = flag.dtype if isinstance(flag, torch.Tensor) else type(flag).__name__
        raise TypeError(f"sLSTM: {name} must be a bool tensor of shape {tuple(shape)}, got {got}")
    if tuple(flag.shape) != tuple(shape):
        raise ValueError(f"sLSTM: {name} must be {tuple(shape)}, got {tuple(flag.shape)}")
    if flag.device != torch.device(device):
        raise ValueError(f"sLSTM: {name} is on {flag.device} but the inputs are on {device}; move it to {device}")


def apply_reset(state: SLSTMState, reset: torch.Tensor | None) -> SLSTMState:
    """Replace the rows of ``state`` where ``reset (B,)`` is True by the empty state."""
    if reset is None:
        return state
    r = reset[:, None, None]
    h, c, n, m = state
    return SLSTMState(
        torch.where(r, 0.0, h), torch.where(r, 0.0, c), torch.where(r, 0.0, n), torch.where(r, float("-inf"), m)
    )


def slstm_step(
    wx: torch.Tensor,
    state: SLSTMState,
    R: torch.Tensor,
    b: torch.Tensor,
    forget_gate: ForgetGate = "sigmoid",
    reset: torch.Tensor | None = None,
) -> SLSTMState:
    """One sLSTM step. ``wx (B, 4, H, Dh)``, R ``(H, Dh, 4, Dh)``, b ``(H, 4, Dh)``; returns the new state.

    ``reset``: optional bool ``(B,)``; rows where this token starts a new document have
    their state replaced by the empty state (h = c = n = 0, m = -inf) before the step.
    """
    validate_token_flags(reset, "reset", (wx.shape[0],), wx.device)
    h, c, n, m = apply_reset(state, reset)
    raw = wx + torch.einsum("bhk,hkgd->bghd", h, R) + b.transpose(0, 1)
    i, f, z, o = raw.unbind(dim=1)
    logf = F.logsigmoid(f) if forget_gate == "sigmoid" else f
    m_new = torch.maximum(logf + m, i)
    i_act = torch.exp(i - m_new)
    f_act = torch.exp(logf + m - m_new)
    c_new = f_act * c + i_act * torch.tanh(z)
    n_new = f_act * n + i_act
    h_new = torch.sigmoid(o) * c_new / n_new
    return SLSTMState(h_new, c_new, n_new, m_new)


def _validate(wx: torch.Tensor, R: torch.Tensor, b: torch.Tensor, forget_gate: str) -> None:
    if forget_gate not in ("sigmoid", "exp"):
        raise ValueError(f"sLSTM: forget_gate must be 'sigmoid' or 'exp', got {forget_gate!r}")
    for name, t in (("Wx", wx), ("R", R), ("b", b)):
        if not t.is_floating_point():
            raise TypeError(f"sLSTM: {name} must be a floating-point tensor, got {t.dtype}")
    if wx.dim() != 5 or wx.shape[2] != 4:
        raise ValueError(f"sLSTM: Wx must be (B, T, 4, H, Dh) in gate order i, f, z, o; got {tuple(wx.shape)}")
    _, _, _, H, Dh = wx.shape
    if tuple(R.shape) != (H, Dh, 4, Dh):
        raise ValueError(f"sLSTM: R must be (H, Dh, 4, Dh) = {(H, Dh, 4, Dh)}, got {tuple(R.shape)}")
    if tuple(b.shape) != (H, 4, Dh):
        raise ValueError(f"sLSTM: b must be (H, 4, Dh) = {(H, 4, Dh)}, got {tuple(b.shape)}")


def slstm_recurrent(
    wx: torch.Tensor,
    R: torch.Tensor,
    b: torch.Tensor,
    initial_state: SLSTMState | tuple | None = None,
    forget_gate: ForgetGate = "sigmoid",
    mask: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, SLSTMState]:
    """sLSTM over a sequence.

    Args:
        wx: input gate pre-activations ``(B, T, 4, H, Dh)`` (order i, f, z, o).
        R: recurrent weights ``(H, Dh, 4, Dh)``; b: bias ``(H, 4, Dh)``.
        initial_state: optional ``(h, c, n, m)``, each ``(B, H, Dh)``; None is the empty state.
        forget_gate: "sigmoid" or "exp".
        mask: optional update mask ``(B, T)`` bool; where False the token leaves the
            state untouched (padding) and its output is the carried h.
        reset: optional ``(B, T)`` bool; where True the token starts a new document: the
            state entering it is replaced by the empty state (before ``mask`` applies, so
            a masked reset token carries the empty state on, with output h = 0). The
            initial state only reaches tokens before a row's first reset.
    Returns:
        h for every step ``(B, T, H, Dh)`` in wx's dtype, and the final state
        (float32, or float64 for float64 inputs).
    """
    _validate(wx, R, b, forget_gate)
    B, T, _, H, Dh = wx.shape
    in_dtype = wx.dtype
    dtype = compute_dtype(in_dtype)
    if initial_state is None:
        state = slstm_empty_state(B, H, Dh, dtype, wx.device)
    else:
        for name, t in zip(SLSTMState._fields, initial_state):
            if tuple(t.shape) != (B, H, Dh):
                raise ValueError(f"sLSTM: initial state {name} must be (B, H, Dh) = {(B, H, Dh)}, got {tuple(t.shape)}")
        state = SLSTMState(*(t.to(dtype) for t in initial_state))
    if mask is not None and tuple(mask.shape) != (B, T):
        raise ValueError(f"sLSTM: mask must be (B, T) = {(B, T)}, got {tuple(mask.shape)}")
    validate_token_flags(reset, "reset", (B, T), wx.device)
    wx, R, b = wx.to(dtype), R.to(dtype), b.to(dtype)
    # Unbind time once: indexing wx[:, t] in the loop would make autograd build a
    # full-size zero gradient for every step, a backward quadratic in T.
    no_flags = [None] * T
    steps = zip(
        wx.unbind(1),
        no_flags if reset is None else reset.unbind(1),
        no_flags if mask is None else mask.unbind(1),
    )
    hs = []
    for wx_t, reset_t, mask_t in steps:
        if reset_t is not None:
            state = apply_reset(state, reset_t)
        new = slstm_step(wx_t, state, R, b, forget_gate)
        if mask_t is not None:
            keep = mask_t[:, None, None]
            new = SLSTMState(*(torch.where(keep, a, o) for a, o in zip(new, state)))
        state = new
        hs.append(state.h)
    out = torch.stack(hs, dim=1) if hs else wx.new_zeros(B, 0, H, Dh)
    return out.to(in_dtype), state
