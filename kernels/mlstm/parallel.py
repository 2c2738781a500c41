"""mLSTM, parallel (quadratic) form, stabilised row-wise, with an optional initial state.

With F_t = sum_{s<=t} logsigmoid(f_s) (cumulative log forget gate) the recurrence
unrolls to a gated linear attention (xLSTM paper, App. A.3):

    log D_tj = F_t - F_j + i_j          for j <= t, else -inf
    log w_t  = F_t + m_0                (weight of the initial memory C_0, n_0)
    m_t      = max(max_j log D_tj, log w_t)
    S_tj     = (q~_t . k_j) exp(log D_tj - m_t)
    h_t      = (S_t v + exp(log w_t - m_t) C_0^T q~_t)
               / (max(|sum_j S_tj + exp(log w_t - m_t) n_0 . q~_t|, exp(-m_t)) + eps)

m_t equals the recurrent stabiliser exactly, so this form matches
``naive.mlstm_recurrent`` to rounding.

Document boundaries (``reset``, True where a token starts a new document): D_tj is
masked where a reset lies in (j, t]; where a reset lies in [0, t] the initial memory
gets weight 0 and its stabiliser candidate becomes that of the empty memory (m = 0)
entering the last reset r <= t, log w_t = F_t - F_{r-1}. The final state is the last row's weights
applied to k v^T. Memory is O(T^2) per head: use it for short sequences, tests
and as the intra-chunk part of the chunkwise form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import exp_neg_m, MLSTMState, compute_dtype, prepare_state, validate_inputs, validate_reset


def mlstm_parallel_core(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    logf: torch.Tensor,
    state: MLSTMState,
    eps: float,
    reset: torch.Tensor | None = None,
    return_last_state: bool = True,
) -> tuple[torch.Tensor, MLSTMState | None]:
    """Parallel form on prepared inputs (all in the computation dtype).

    Shapes: q, k ``(..., T, Dqk)``, v ``(..., T, Dv)``, i, logf ``(..., T)`` where
    logf is already logsigmoid(f); state C ``(..., Dqk, Dv)``, n ``(..., Dqk)``, m ``(...)``.
    Leading dims may be (B, H) or (B, H, NC) (chunkwise). ``reset``: optional bool
    broadcastable to ``(..., T)`` (e.g. ``(B, 1, T)``), True where a token starts a
    new document; the given state is the memory entering the first token.
    Returns h ``(..., T, Dv)`` and the final state, or None for it unless
    ``return_last_state`` (it costs a ``(Dqk x T) @ (T x Dv)`` product per head).
    """
    C0, n0, m0 = state
    T = q.shape[-2]
    scale = q.shape[-1] ** -0.5
    cum = torch.cumsum(logf, dim=-1)  # (..., T)
    log_D = cum[..., :, None] - cum[..., None, :] + i[..., None, :]  # (..., T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    log_D = log_D.masked_fill(~causal, float("-inf"))
    log_w = cum + m0[..., None]  # (..., T)
    if reset is not None:
        # segment id = number of resets at or before t; D_tj needs j, t in one segment
        seg = torch.cumsum(reset.to(torch.int32), dim=-1)  # (..., T) broadcastable
        log_D = log_D.masked_fill(seg[..., :, None] != seg[..., None, :], float("-inf"))
        use_state = seg == 0
        # after a reset at r the stabiliser starts from the empty memory (m = 0) entering r:
        # log w_t = F_t - F_{r-1}, with F_{r-1} the exclusive cumsum at the last reset r <= t
        excl = F.pad(cum[..., :-1], (1, 0))
        pos = torch.arange(T, device=q.device)
        last_reset = torch.where(reset, pos, -1).cummax(dim=-1).values.expand_as(excl)
        anchor = torch.gather(excl, -1, last_reset.clamp(min=0))
        log_w = torch.where(use_state, log_w, cum - anchor)
    m = torch.maximum(log_D.amax(dim=-1), log_w)  # (..., T)
    D = torch.exp(log_D - m[..., None])
    w = torch.exp(log_w - m)  # (..., T)
    if reset is not None:
        # the initial memory does not reach tokens at or after a reset
        w = torch.where(use_state, w, 0.0)
    q_s = q * scale
    S = (q_s @ k.transpose(-1, -2)) * D  # (..., T, T)
    num = S @ v + w[..., None] * (q_s @ C0)
    den = S.sum(dim=-1) + w * (q_s @ n0[..., None]).squeeze(-1)
    h = num / (torch.maximum(den.abs(), exp_neg_m(m)) + eps)[..., None]
    if not return_last_state:
        return h, None
    # Final state: the last row of the decay weights applied to k v^T.
    m_T = m[..., -1]
    d_T = D[..., -1, :]  # (..., T): exp(F_T - F_j + i_j - m_T)
    w_T = w[..., -1]
    k_w = k * d_T[..., None]
    C_T = w_T[..., None, None] * C0 + k_w.transpose(-1, -2) @ v
    n_T = w_T[..., None] * n0 + k_w.sum(dim=-2)
    return h, MLSTMState(C_T, n_T, m_T)


def mlstm_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state: MLSTMState | tuple | None = None,
    return_last_state: bool = False,
    eps: float = 1e-6,
    reset: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, MLSTMState]:
    """mLSTM over a sequence in the quadratic parallel form.

    Args:
        q, k: ``(B, H, T, Dqk)``; v: ``(B, H, T, Dv)``; i, f: ``(B, H, T)`` pre-activations.
        initial_state: optional ``(C (B, H, Dqk, Dv), n (B, H, Dqk), m (B, H))``.
        return_last_state: also return the final state (not computed otherwise).
        reset: optional bool ``(B, T)``, True where a token starts a new document
            (see ``naive.mlstm_recurrent``).
    Returns:
        h ``(B, H, T, Dv)`` in q's dtype; with return_last_state also ``(C, n, m)``
        in float32 (float64 for float64 inputs).
    """
    validate_inputs(q, k, v, i, f)
    B, H, T, Dqk = q.shape
    Dv = v.shape[-1]
    in_dtype = q.dtype
    dtype = compute_dtype(in_dtype)
    validate_reset(reset, (B, T), q.device)
    state = prepare_state(initial_state, B, H, Dqk, Dv, dtype, q.device)
    if T == 0:
        h = v.new_zeros(B, H, 0, Dv)
        return (h, state) if return_last_state else h
    q, k, v, i, f = (t.to(dtype) for t in (q, k, v, i, f))
    reset = None if reset is None else reset[:, None, :]
    h, last = mlstm_parallel_core(q, k, v, i, F.logsigmoid(f), state, eps, reset, return_last_state)
    h = h.to(in_dtype)
    return (h, last) if return_last_state else h
