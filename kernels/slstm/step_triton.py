"""sLSTM decode step in Triton: one token with a carried state, fused in one kernel.

Same contract as ``naive.slstm_step`` (forward only: decoding needs no gradient). Grid
(ceil(B / BB), H, Dh-tiles): each program computes, for BB batch rows of one head and
BN output units, the four gates Wx_t + b + h_{t-1} @ R_g (R read in (BK, BN) tiles)
and the pointwise exponential gating of ``triton_fused._slstm_cell_fwd``. The programs
read the old state and write a new one, so they need no synchronisation.
Where ``reset`` is set for a row, its state is replaced by the empty state first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .naive import SLSTMState, validate_token_flags
from . import triton_fused
from .triton_fused import MAX_HEAD_DIM, _DTYPES, _slstm_cell_fwd
from .. import launch

# Set by tests: fill output buffers with NaN before the kernel runs.


@triton.jit
def slstm_step_fwd_kernel(
    wx_ptr, R_ptr, b_ptr, reset_ptr,
    h_ptr, c_ptr, n_ptr, m_ptr,
    h_out_ptr, c_out_ptr, n_out_ptr, m_out_ptr,
    B, H, DH,
    BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    HAS_RESET: tl.constexpr, EXP_FORGET: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Grid (ceil(B / BB), H, ceil(DH / BN)). wx (B, 4, H, DH); R (H, DH, 4, DH);
    b (H, 4, DH); reset (B,) int8; state in and out: h, c, n, m (B, H, DH) fp32."""
    pid_b = tl.program_id(0)
    hd = tl.program_id(1)
    pid_n = tl.program_id(2)
    HD = H * DH
    offs_b = pid_b * BB + tl.arange(0, BB)
    cols = pid_n * BN + tl.arange(0, BN)
    row_ok = offs_b < B
    col_ok = cols < DH
    bd_ok = row_ok[:, None] & col_ok[None, :]
    rows = offs_b.to(tl.int64)
    s_row = rows[:, None] * HD + hd * DH
    if HAS_RESET:
        rs = (tl.load(reset_ptr + rows, mask=row_ok, other=0) != 0)[:, None]

    acc_i = tl.zeros([BB, BN], dtype=tl.float32)
    acc_f = tl.zeros([BB, BN], dtype=tl.float32)
    acc_z = tl.zeros([BB, BN], dtype=tl.float32)
    acc_o = tl.zeros([BB, BN], dtype=tl.float32)
    r_head = R_ptr + hd * DH * 4 * DH
    for kt in range(0, tl.cdiv(DH, BK)):
        ks = kt * BK + tl.arange(0, BK)
        k_ok = ks < DH
        h = tl.load(h_ptr + s_row + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if HAS_RESET:
            h = tl.where(rs, 0.0, h)
        r_p = r_head + ks[:, None] * (4 * DH) + cols[None, :]
        r_ok = k_ok[:, None] & col_ok[None, :]
        acc_i += tl.dot(h, tl.load(r_p, mask=r_ok, other=0.0).to(tl.float32), input_precision=DOT_PREC)
        acc_f += tl.dot(h, tl.load(r_p + DH, mask=r_ok, other=0.0).to(tl.float32), input_precision=DOT_PREC)
        acc_z += tl.dot(h, tl.load(r_p + 2 * DH, mask=r_ok, other=0.0).to(tl.float32), input_precision=DOT_PREC)
        acc_o += tl.dot(h, tl.load(r_p + 3 * DH, mask=r_ok, other=0.0).to(tl.float32), input_precision=DOT_PREC)

    x_p = wx_ptr + rows[:, None] * (4 * HD) + hd * DH + cols[None, :]
    b_p = b_ptr + hd * 4 * DH + cols[None, :]
    b_ok = col_ok[None, :]
    gi = acc_i + tl.load(x_p, mask=bd_ok, other=0.0).to(tl.float32)
    gf = acc_f + tl.load(x_p + HD, mask=bd_ok, other=0.0).to(tl.float32)
    gz = acc_z + tl.load(x_p + 2 * HD, mask=bd_ok, other=0.0).to(tl.float32)
    go = acc_o + tl.load(x_p + 3 * HD, mask=bd_ok, other=0.0).to(tl.float32)
    gi += tl.load(b_p, mask=b_ok, other=0.0).to(tl.float32)
    gf += tl.load(b_p + DH, mask=b_ok, other=0.0).to(tl.float32)
    gz += tl.load(b_p + 2 * DH, mask=b_ok, other=0.0).to(tl.float32)
    go += tl.load(b_p + 3 * DH, mask=b_ok, other=0.0).to(tl.float32)

    s_off = s_row + cols[None, :]
    c = tl.load(c_ptr + s_off, mask=bd_ok, other=0.0)
    n = tl.load(n_ptr + s_off, mask=bd_ok, other=0.0)
    m = tl.load(m_ptr + s_off, mask=bd_ok, other=0.0)
    if HAS_RESET:
        c = tl.where(rs, 0.0, c)
        n = tl.where(rs, 0.0, n)
        m = tl.where(rs, float("-inf"), m)
    h_new, c_new, n_new, m_new = _slstm_cell_fwd(gi, gf, gz, go, c, n, m, EXP_FORGET)
    tl.store(h_out_ptr + s_off, h_new, mask=bd_ok)
    tl.store(c_out_ptr + s_off, c_new, mask=bd_ok)
    tl.store(n_out_ptr + s_off, n_new, mask=bd_ok)
    tl.store(m_out_ptr + s_off, m_new, mask=bd_ok)



def slstm_step_triton(
    wx: torch.Tensor,
    state: SLSTMState | tuple,
    R: torch.Tensor,
    b: torch.Tensor,
    forget_gate: str = "sigmoid",
    reset: torch.Tensor | None = None,
) -> SLSTMState:
    """One fused sLSTM decode step (no autograd).

    Args:
        wx: gate pre-activations of this token ``(B, 4, H, Dh)`` (order i, f, z, o);
            float32, bfloat16 or float16; 1 <= Dh <= 1024.
        state: ``(h, c, n, m)``, each ``(B, H, Dh)``, cast to float32 (m = -inf: empty).
        R: ``(H, Dh, 4, Dh)``; b: ``(H, 4, Dh)``; float32, bfloat16 or float16.
        forget_gate: "sigmoid" or "exp".
        reset: optional bool ``(B,)``: rows whose token starts a new document (their state
            is replaced by the empty state first).
    Returns:
        The new ``SLSTMState(h, c, n, m)``, each ``(B, H, Dh)`` float32 (new tensors; the
        given state is not modified). The token's output is its ``h``.
    """
    if forget_gate not in ("sigmoid", "exp"):
        raise ValueError(f"slstm_step_triton: forget_gate must be 'sigmoid' or 'exp', got {forget_gate!r}")
    if wx.dim() != 4 or wx.shape[1] != 4:
        raise ValueError(f"slstm_step_triton: wx must be (B, 4, H, Dh) in gate order i, f, z, o; got {tuple(wx.shape)}")
    B, _, H, Dh = wx.shape
    if tuple(R.shape) != (H, Dh, 4, Dh):
        raise ValueError(f"slstm_step_triton: R must be (H, Dh, 4, Dh) = {(H, Dh, 4, Dh)}, got {tuple(R.shape)}")
    if tuple(b.shape) != (H, 4, Dh):
        raise ValueError(f"slstm_step_triton: b must be (H, 4, Dh) = {(H, 4, Dh)}, got {tuple(b.shape)}")
    for name, t in (("wx", wx), ("R", R), ("b", b)):
        if t.dtype not in _DTYPES:
            raise TypeError(
                f"slstm_step_triton: {name} must be float32, bfloat16 or float16, got {t.dtype}; use slstm_step for float64"
            )
    if not 1 <= Dh <= MAX_HEAD_DIM:
        raise ValueError(f"slstm_step_triton: head dim Dh={Dh} is not supported; use 1 <= Dh <= {MAX_HEAD_DIM}")
    if len(state) != 4:
        raise ValueError(f"slstm_step_triton: state must be (h, c, n, m), got {len(state)} tensors")
    for name, t in zip(SLSTMState._fields, state):
        if tuple(t.shape) != (B, H, Dh):
            raise ValueError(f"slstm_step_triton: state {name} must be (B, H, Dh) = {(B, H, Dh)}, got {tuple(t.shape)}")
    device = wx.device
    for name, t in (("R", R), ("b", b), ("reset", reset), *zip(("state h", "state c", "state n", "state m"), state)):
        if t is not None and t.device != device:
            raise ValueError(f"slstm_step_triton: {name} is on {t.device} but wx is on {device}; put all inputs on one device")
    if device.type != "cuda" and not launch.interpreted():
        raise ValueError(
            f"slstm_step_triton: tensors are on {device}; the kernel needs CUDA tensors "
            "(or TRITON_INTERPRET=1 set before triton is imported); use slstm_step for CPU"
        )
    validate_token_flags(reset, "reset", (B,), device)
    h, c, n, m = (t.float().contiguous() for t in state)
    wx, R, b = wx.contiguous(), R.contiguous(), b.contiguous()
    out = [launch.empty((B, H, Dh), torch.float32, device) for _ in range(4)]
    DP = max(16, triton.next_power_of_2(Dh))
    BN = min(DP, 64)
    BK = min(DP, 64)
    BB = 16
    reset_i8 = wx if reset is None else reset.to(torch.int8).contiguous()
    # TODO(gpu): measure decode at B in (1, 16, 64) for Dh = 512: BN = 32 doubles the programs.
    slstm_step_fwd_kernel[(triton.cdiv(B, BB), H, triton.cdiv(Dh, BN))](
        wx, R, b, reset_i8,
        h, c, n, m,
        *out,
        B, H, Dh,
        BB=BB, BN=BN, BK=BK, HAS_RESET=reset is not None, EXP_FORGET=forget_gate == "exp",
        DOT_PREC=triton_fused.DOT_PRECISION, num_warps=4,
    )
    return SLSTMState(*out)
