"""mLSTM, recurrent form: the plainest step-by-step stabilised recurrence.

This is the definition every other form (parallel, chunkwise, Triton) is tested
against. One step, for each batch element and head (xLSTM paper, Sec. 2.3, with
the max-stabiliser of App. A):

    logf_t = logsigmoid(f_t)
    m_t    = max(logf_t + m_{t-1}, i_t)
    f'_t   = exp(logf_t + m_{t-1} - m_t),   i'_t = exp(i_t - m_t)
    C_t    = f'_t C_{t-1} + i'_t k_t v_t^T            # (Dqk, Dv)
    n_t    = f'_t n_{t-1} + i'_t k_t                  # (Dqk,)
    h_t    = C_t^T q~_t / (max(|n_t . q~_t|, exp(-m_t)) + eps),  q~_t = q_t / sqrt(Dqk)

Layout convention of all mLSTM ops: q, k ``(B, H, T, Dqk)``, v ``(B, H, T, Dv)``,
gate pre-activations i, f ``(B, H, T)``; state C ``(B, H, Dqk, Dv)``, n ``(B, H, Dqk)``,
m ``(B, H)``. An empty memory is C = 0, n = 0, m = 0 (the convention of the
``mlstm_kernels`` kernels). Because C and n are both scaled by exp(-m), h does not
depend on the stabiliser except through ``eps``.

Document boundaries: an optional bool ``reset`` ((B, T) for a sequence, (B,) for a
step) marks tokens that start a new document. The memory entering such a token is
replaced by the empty memory, so a packed row of several documents gives exactly
the outputs of running each document separately from an empty state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import exp_neg_m, MLSTMState, compute_dtype, prepare_state, validate_inputs, validate_reset


def mlstm_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    state: MLSTMState,
    eps: float = 1e-6,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """One recurrent step (decode).

    Args:
        q, k: ``(B, H, Dqk)``; v: ``(B, H, Dv)``; i, f: ``(B, H)`` gate pre-activations.
        state: ``(C (B, H, Dqk, Dv), n (B, H, Dqk), m (B, H))``, in the computation dtype.
        reset: optional bool ``(B,)``: rows where this token starts a new document; their
            state is replaced by the empty memory (C = 0, n = 0, m = 0) before the step.
    Returns:
        h ``(B, H, Dv)`` and the new state.
    """
    C, n, m = state
    if reset is not None:
        validate_reset(reset, (q.shape[0],), q.device)
        C = torch.where(reset[:, None, None, None], 0.0, C)
        n = torch.where(reset[:, None, None], 0.0, n)
        m = torch.where(reset[:, None], 0.0, m)
    scale = q.shape[-1] ** -0.5
    logf = F.logsigmoid(f)
    m_new = torch.maximum(logf + m, i)
    f_act = torch.exp(logf + m - m_new)
    i_act = torch.exp(i - m_new)
    C_new = f_act[..., None, None] * C + i_act[..., None, None] * (k[..., :, None] * v[..., None, :])
    n_new = f_act[..., None] * n + i_act[..., None] * k
    q_s = q * scale
    h_num = torch.einsum("bhd,bhde->bhe", q_s, C_new)
    qn = torch.einsum("bhd,bhd->bh", q_s, n_new)
    denom = torch.maximum(qn.abs(), exp_neg_m(m_new)) + eps
    return h_num / denom[..., None], MLSTMState(C_new, n_new, m_new)


def mlstm_recurrent(
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
    """mLSTM over a sequence by stepping the recurrence (the reference definition).

    Args:
        q, k: ``(B, H, T, Dqk)``; v: ``(B, H, T, Dv)``; i, f: ``(B, H, T)``.
        initial_state: optional ``(C, n, m)``; None is the empty memory.
        return_last_state: also return the final ``(C, n, m)``.
        reset: optional bool ``(B, T)``; True where a token starts a new document (the
            memory entering it is emptied). The initial state only reaches tokens before
            a row's first reset; the final state is that of the row's last document.
    Returns:
        h ``(B, H, T, Dv)`` in the dtype of q (and the final state, in float32 or float64).
    """
    validate_inputs(q, k, v, i, f)
    in_dtype = q.dtype
    dtype = compute_dtype(in_dtype)
    B, H, T, Dqk = q.shape
    Dv = v.shape[-1]
    validate_reset(reset, (B, T), q.device)
    state = prepare_state(initial_state, B, H, Dqk, Dv, dtype, q.device)
    q, k, v, i, f = (t.to(dtype) for t in (q, k, v, i, f))
    # Unbind time once: indexing q[:, :, t] in the loop would make autograd build a
    # full-size zero gradient for every step, a backward quadratic in T.
    steps = zip(*(t.unbind(2) for t in (q, k, v, i, f)), [None] * T if reset is None else reset.unbind(1))
    hs = []
    for q_t, k_t, v_t, i_t, f_t, r_t in steps:
        h, state = mlstm_step(q_t, k_t, v_t, i_t, f_t, state, eps, reset=r_t)
        hs.append(h)
    h = torch.stack(hs, dim=2) if hs else v.new_zeros(B, H, 0, Dv)
    h = h.to(in_dtype)
    return (h, state) if return_last_state else h
