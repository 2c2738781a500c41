"""mLSTM decode step in Triton: one token with a carried state, fused in one kernel.

Same contract as ``naive.mlstm_step`` (forward only: decoding needs no gradient).
Per (batch, head) and Dv-tile, one program computes the gates, updates its tile of
C (and n, computed by every tile, stored by the first), and reads out h:

    m'  = max(logsigmoid(f) + m, i)
    C'  = exp(logsigmoid(f) + m - m') C + exp(i - m') k v^T,   n' likewise with k
    h   = C'^T q~ / (max(|n' . q~|, exp(-m')) + eps),          q~ = q / sqrt(Dqk)

Where ``reset`` is set for a row, its state is replaced by the empty memory first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import MLSTMState, prepare_state, validate_reset
from .. import launch

MAX_HEAD_DIM = 512
# Set by tests: fill output buffers with NaN before the kernel runs.


@triton.jit
def mlstm_step_fwd_kernel(
    q_ptr, k_ptr, v_ptr, i_ptr, f_ptr, reset_ptr,
    C_ptr, n_ptr, m_ptr,
    h_ptr, C_out_ptr, n_out_ptr, m_out_ptr,
    scale, eps,
    H, DQK, DV,
    BK: tl.constexpr, BV: tl.constexpr, HAS_RESET: tl.constexpr,
):
    """Grid (B*H, Dv-tiles). q, k (B, H, DQK); v, h (B, H, DV); i, f, m (B, H) fp32;
    C (B, H, DQK, DV), n (B, H, DQK) fp32; reset (B,) int32."""
    pid_bh = tl.program_id(0)
    pid_v = tl.program_id(1)
    bh = pid_bh.to(tl.int64)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_v = offs_v < DV

    i = tl.load(i_ptr + bh)
    f = tl.load(f_ptr + bh)
    m = tl.load(m_ptr + bh)
    if HAS_RESET:
        is_reset = tl.load(reset_ptr + bh // H) != 0
        m = tl.where(is_reset, 0.0, m)
    # logsigmoid(f) = min(f, 0) - log(1 + exp(-|f|)), stable for large |f|
    log_f = tl.minimum(f, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f)))
    m_new = tl.maximum(log_f + m, i)
    f_act = tl.exp(log_f + m - m_new)
    i_act = tl.exp(i - m_new)

    v = tl.load(v_ptr + bh * DV + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    h_num = tl.zeros([BV], dtype=tl.float32)
    qn = tl.sum(tl.zeros([BV], dtype=tl.float32), axis=0)
    for kb in range(0, tl.cdiv(DQK, BK)):
        offs_k = kb * BK + tl.arange(0, BK)
        mask_k = offs_k < DQK
        mask_kv = mask_k[:, None] & mask_v[None, :]
        q = tl.load(q_ptr + bh * DQK + offs_k, mask=mask_k, other=0.0).to(tl.float32) * scale
        k = tl.load(k_ptr + bh * DQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        kv_off = bh * DQK * DV + offs_k[:, None] * DV + offs_v[None, :]
        C = tl.load(C_ptr + kv_off, mask=mask_kv, other=0.0)
        n = tl.load(n_ptr + bh * DQK + offs_k, mask=mask_k, other=0.0)
        if HAS_RESET:
            C = tl.where(is_reset, 0.0, C)
            n = tl.where(is_reset, 0.0, n)
        C = f_act * C + i_act * (k[:, None] * v[None, :])
        n = f_act * n + i_act * k
        tl.store(C_out_ptr + kv_off, C, mask=mask_kv)
        # n is computed by every Dv-tile and stored by the first
        tl.store(n_out_ptr + bh * DQK + offs_k, n, mask=mask_k & ((offs_k * 0 + pid_v) == 0))
        h_num += tl.sum(q[:, None] * C, axis=0)
        qn += tl.sum(q * n, axis=0)
    denom = tl.maximum(tl.abs(qn), tl.exp(-m_new)) + eps
    tl.store(h_ptr + bh * DV + offs_v, (h_num / denom).to(h_ptr.dtype.element_ty), mask=mask_v)
    tl.store(m_out_ptr + bh, m_new, mask=pid_v == 0)



def mlstm_step_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    state: MLSTMState | tuple,
    eps: float = 1e-6,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """One fused mLSTM decode step (no autograd).

    Args:
        q, k: ``(B, H, Dqk)``; v: ``(B, H, Dv)``: float32, bfloat16 or float16, one dtype;
            1 <= Dqk, Dv <= 512.
        i, f: ``(B, H)`` gate pre-activations (any float dtype, used in fp32).
        state: ``(C (B, H, Dqk, Dv), n (B, H, Dqk), m (B, H))``, cast to float32.
        reset: optional bool ``(B,)``: rows whose token starts a new document (their state
            is replaced by the empty memory first).
    Returns:
        h ``(B, H, Dv)`` in q's dtype and the new ``MLSTMState`` in float32 (new tensors;
        the given state is not modified).
    """
    for name, t, nd in (("q", q, 3), ("k", k, 3), ("v", v, 3), ("i", i, 2), ("f", f, 2)):
        if t.dim() != nd:
            raise ValueError(f"mlstm_step_triton: {name} must have {nd} dims, got shape {tuple(t.shape)}")
    if q.shape != k.shape or v.shape[:2] != q.shape[:2] or i.shape != q.shape[:2] or f.shape != q.shape[:2]:
        raise ValueError(
            f"mlstm_step_triton: expected q, k (B, H, Dqk), v (B, H, Dv), i, f (B, H); got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}, i {tuple(i.shape)}, f {tuple(f.shape)}"
        )
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"mlstm_step_triton: q, k, v must share one dtype among float32, bfloat16, float16; "
            f"got {q.dtype}, {k.dtype}, {v.dtype} (use mlstm_step for float64)"
        )
    B, H, Dqk = q.shape
    Dv = v.shape[-1]
    for name, d in (("Dqk", Dqk), ("Dv", Dv)):
        if not 1 <= d <= MAX_HEAD_DIM:
            raise ValueError(f"mlstm_step_triton: head dim {name}={d} is not supported; use 1 <= {name} <= {MAX_HEAD_DIM}")
    device = q.device
    others = {"k": k, "v": v, "i": i, "f": f, "reset": reset, **dict(zip(("C", "n", "m"), state))}
    for name, t in others.items():
        if t is not None and t.device != device:
            raise ValueError(f"mlstm_step_triton: {name} is on {t.device} but q is on {device}; put all inputs on one device")
    if device.type != "cuda" and not triton.knobs.runtime.interpret:
        raise ValueError(
            f"mlstm_step_triton: tensors are on {device}; the kernel needs CUDA tensors "
            "(or TRITON_INTERPRET=1 set before triton is imported); use mlstm_step for CPU"
        )
    validate_reset(reset, (B,), device)
    C, n, m = (t.contiguous() for t in prepare_state(state, B, H, Dqk, Dv, torch.float32, device))
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    i, f = i.float().contiguous(), f.float().contiguous()

    h = launch.empty((B, H, Dv), q.dtype, device)
    C_out = launch.empty((B, H, Dqk, Dv), torch.float32, device)
    n_out = launch.empty((B, H, Dqk), torch.float32, device)
    m_out = launch.empty((B, H), torch.float32, device)
    BK = min(max(16, triton.next_power_of_2(Dqk)), 64)
    BV = min(max(16, triton.next_power_of_2(Dv)), 64)
    reset_i = i if reset is None else reset.to(torch.int32).contiguous()
    # TODO(gpu): measure decode at B in (1, 16, 64): split Dqk across programs too when B*H is small.
    mlstm_step_fwd_kernel[(B * H, triton.cdiv(Dv, BV))](
        q, k, v, i, f, reset_i,
        C, n, m,
        h, C_out, n_out, m_out,
        Dqk**-0.5, float(eps),
        H, Dqk, Dv,
        BK=BK, BV=BV, HAS_RESET=reset is not None, num_warps=4,
    )
    return h, MLSTMState(C_out, n_out, m_out)
