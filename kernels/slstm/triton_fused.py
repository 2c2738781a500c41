"""sLSTM in Triton: the whole time loop in one kernel launch per pass (forward, backward).

Same function as ``naive.slstm_recurrent`` (see its docstring for the recurrence, the
stabiliser m, the empty state h = c = n = 0, m = -inf, and the per-token ``reset`` and
``mask``), with gradients w.r.t. Wx, R, b and every entry of the initial state.

Design
------
* Forward, one launch, grid (ceil(B / BB), H): a program owns BB batch rows of one head
  and loops over T. Per step: gates = Wx_t + b + h_{t-1} @ R_g for g in (i, f, z, o)
  (four (BB, Dh) x (Dh, Dh) dots, fp32 IEEE), then the pointwise exponential gating.
  Two variants, chosen on the host by the padded head dim DP = next_pow2(Dh):
  - ``resident`` (DP <= RESIDENT_MAX_DH): R (4 x DP x DP) is loaded once into registers
    and the state (h, c, n, m) stays in registers across steps.
  - ``streamed`` (larger DP): R is re-read from L2 every step in (BK, BN) tiles and the
    state entering step t is read back from the saved-state buffer (written at step t-1);
    a CTA barrier ends every step so the next step sees all of this step's h.
  TODO(gpu): only ceil(B / 16) * H programs run (4 SMs at B <= 16, H = 4); measure, and if
  the large-Dh configs are latency-bound split the gate columns over a thread-block
  cluster (sm_90 distributed shared memory for h_{t-1}) instead of one program per head.
* Saved for the backward (the memory trade-off): the state after every step, fp32,
  ``S = (h, c, n, m)`` each ``(B, T + 1, H, Dh)`` (slot 0 = initial state, slot t + 1 =
  after token t), i.e. 16 bytes per (token, unit) -- about 4x the bf16 output. The gate
  pre-activations are *not* saved (that would double it to 32 B): the backward recomputes
  them for all tokens at once, G = Wx + b + h_{t-1} @ R, as one parallel GEMM off the
  serial path. The backward also needs Wx, R, b, mask, reset (inputs, held anyway), and
  holds G (16 B per token and unit, fp32, overwritten by its gradient) while it runs.
* Backward: one launch, same grid and variants, running t = T-1 .. 0 with the carried
  gradients (dh, dc, dn, dm) of the state: re-evaluates the step's pointwise math from
  the saved state entering it and G_t, writes the gate gradients dG_t in place over G_t
  and propagates dh_{t-1} = sum_g dG_{t,g} @ R_g^T. The stabiliser m_t = max(log f + m,
  i) routes its gradient to the larger candidate (split evenly on ties, like
  ``torch.maximum``); from the empty state (m = -inf) f' = 0 and no gradient reaches m.
  The carried gradients left after t = 0 are those of the initial (h, c, n, m).
* dR = sum_{b,t} h_{t-1}^T dG_t and db = sum_{b,t} dG_t are reduced on the host by one
  fp32 GEMM / sum over all tokens (no atomics, deterministic); dWx = dG in Wx's dtype.
  These host GEMMs follow torch's matmul settings (``allow_tf32``) like any torch matmul.

Dtypes: Wx, R, b may each be fp32, bf16 or fp16; all recurrent math (dots included) is
fp32; h is returned in Wx's dtype, the final state in fp32. Batch tiles are padded to
BB = 16 rows (the smallest ``tl.dot`` operand) and head dims to powers of two >= 16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .naive import SLSTMState, _validate, validate_token_flags
from .. import launch

MAX_HEAD_DIM = 1024
# Padded head dims up to this keep R (4 x DP x DP fp32) and the state in registers.
# TODO(gpu): measure the crossover on H100: DP = 64 holds 64 KB of R in registers (8 warps);
# try 128 with R kept in bf16, and registers vs L2 streaming for Dh = 512.
RESIDENT_MAX_DH = 64
# Tiles of the streamed variant: BN output columns per gate, BK input rows of R per dot
# (the backward's second phase uses BK as its output tile). Offline ptxas (sm_90, 8 warps,
# IEEE dots): (32, 64) spills nothing in the forward and 16 B in the backward; (64, 64)
# spills ~300 B in both.
# TODO(gpu): tune (BN, BK, num_warps) for Dh in {128, 192, 256, 512}; a bf16 copy of R would
# halve the L2 traffic per step (4 Dh^2 x 4 B = 4 MB/step at Dh = 512).
STREAM_BN = 32
STREAM_BK = 64
# Precision of the recurrent dots h @ R and dG @ R^T: "ieee" is true fp32 (CUDA-core FMA).
# TODO(gpu): measure "tf32x3" (tensor cores, ~fp32 accuracy): offline ptxas (sm_90) shows
# the IEEE FMA dot with R resident uses 255 registers and spills 50-160 B at DP = 32/64
# (8 warps at 64; 4 warps at DP = 64 spills 8-11 KB, hence num_warps = 8 there).
DOT_PRECISION = "ieee"
# Batch rows per program (>= 16: tl.dot operand).
# TODO(gpu): BB = 32/64 for large B (fewer R reads per step, fewer programs).
BLOCK_B = 16


# =============================================================================== kernels


# The pointwise helpers spell out sigmoid, logsigmoid and tanh instead of calling nested
# @triton.jit functions: on the GPU this is the same code, and under TRITON_INTERPRET every
# nested call re-patches triton.language (the kernels' tests run ~1.3x faster this way).


@triton.jit
def _slstm_cell_fwd(gi, gf, gz, go, c, n, m, EXP_FORGET: tl.constexpr):
    """One pointwise step from the gate pre-activations and the state (c, n, m) entering it."""
    if EXP_FORGET:
        a = gf + m
    else:
        # logsigmoid(f), stable for large |f|
        a = tl.minimum(gf, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(gf))) + m
    m_new = tl.maximum(a, gi)
    i_act = tl.exp(gi - m_new)
    # m = -inf (empty state): a = -inf, f' = 0
    f_act = tl.exp(a - m_new)
    # tanh from exp(-2|z|) <= 1: no overflow at |z| = 1e4
    e = tl.exp(-2.0 * tl.abs(gz))
    tz = (1.0 - e) / (1.0 + e)
    tz = tl.where(gz >= 0, tz, -tz)
    c_new = f_act * c + i_act * tz
    n_new = f_act * n + i_act
    h_new = c_new / ((1.0 + tl.exp(-go)) * n_new)
    return h_new, c_new, n_new, m_new


@triton.jit
def _slstm_cell_bwd(gi, gf, gz, go, c, n, m, dh, dc, dn, dm, EXP_FORGET: tl.constexpr):
    """Gradients of one pointwise step.

    In: gate pre-activations, the state (c, n, m) entering the step, and the gradients
    (dh, dc, dn, dm) w.r.t. the state leaving it. Out: the gate gradients and the
    gradients w.r.t. the entering (c, n, m) (its h only reaches the gates, through R).
    """
    if EXP_FORGET:
        a = gf + m
    else:
        a = tl.minimum(gf, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(gf))) + m
    m_new = tl.maximum(a, gi)
    i_act = tl.exp(gi - m_new)
    f_act = tl.exp(a - m_new)
    e = tl.exp(-2.0 * tl.abs(gz))
    tz = (1.0 - e) / (1.0 + e)
    tz = tl.where(gz >= 0, tz, -tz)
    c_new = f_act * c + i_act * tz
    n_new = f_act * n + i_act
    so = 1.0 / (1.0 + tl.exp(-go))
    rn = 1.0 / n_new
    # h = sigmoid(o) c / n
    dc_t = dc + dh * so * rn
    dn_t = dn - dh * so * c_new * rn * rn
    dgo = dh * c_new * rn * so * (1.0 - so)
    # c' = f' c + i' tanh(z), n' = f' n + i'; f' = exp(a - m'), i' = exp(i - m')
    dfa = (dc_t * c + dn_t * n) * f_act
    dia = (dc_t * tz + dn_t) * i_act
    dgz = dc_t * i_act * (1.0 - tz * tz)
    dm_new = dm - dia - dfa
    # m' = max(a, i): gradient to the larger candidate, halved on ties (as torch.maximum)
    w_a = tl.where(a > gi, 1.0, tl.where(a == gi, 0.5, 0.0))
    dgi = dia + dm_new * (1.0 - w_a)
    da = dfa + dm_new * w_a
    if EXP_FORGET:
        dgf = da
    else:
        # d logsigmoid(f) / df = sigmoid(-f)
        dgf = da / (1.0 + tl.exp(gf))
    return dgi, dgf, dgz, dgo, dc_t * f_act, dn_t * f_act, da


@triton.jit
def slstm_fwd_kernel_resident(
    wx_ptr, R_ptr, b_ptr, mask_ptr, reset_ptr,
    out_ptr, hs_ptr, cs_ptr, ns_ptr, ms_ptr,
    B, T, H, DH,
    BB: tl.constexpr, DP: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_RESET: tl.constexpr, EXP_FORGET: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Forward with R and the state in registers. Grid (ceil(B / BB), H).

    wx (B, T, 4, H, DH); R (H, DH, 4, DH); b (H, 4, DH); mask, reset (B, T) int8;
    out (B, T, H, DH) in the output dtype; hs, cs, ns, ms (B, T + 1, H, DH) fp32 with
    slot 0 holding the initial state (read) and slots 1..T written.
    """
    pid_b = tl.program_id(0)
    hd = tl.program_id(1)
    HD = H * DH
    offs_b = pid_b * BB + tl.arange(0, BB)
    offs_d = tl.arange(0, DP)
    row_ok = offs_b < B
    col_ok = offs_d < DH
    bd_ok = row_ok[:, None] & col_ok[None, :]
    rows = offs_b.to(tl.int64)
    col = hd * DH + offs_d[None, :]

    # R_g (DP_in, DP_out) for the four gates, zero-padded
    rk = tl.arange(0, DP)[:, None]
    rd = tl.arange(0, DP)[None, :]
    r_ok = (rk < DH) & (rd < DH)
    r_p = R_ptr + hd * DH * 4 * DH + rk * 4 * DH + rd
    R_i = tl.load(r_p, mask=r_ok, other=0.0).to(tl.float32)
    R_f = tl.load(r_p + DH, mask=r_ok, other=0.0).to(tl.float32)
    R_z = tl.load(r_p + 2 * DH, mask=r_ok, other=0.0).to(tl.float32)
    R_o = tl.load(r_p + 3 * DH, mask=r_ok, other=0.0).to(tl.float32)
    b_p = b_ptr + hd * 4 * DH + offs_d[None, :]
    b_i = tl.load(b_p, mask=col_ok[None, :], other=0.0).to(tl.float32)
    b_f = tl.load(b_p + DH, mask=col_ok[None, :], other=0.0).to(tl.float32)
    b_z = tl.load(b_p + 2 * DH, mask=col_ok[None, :], other=0.0).to(tl.float32)
    b_o = tl.load(b_p + 3 * DH, mask=col_ok[None, :], other=0.0).to(tl.float32)

    # the initial state is slot 0 of the state buffers; pointers advance one token per step
    s_off = (rows * (T + 1) * HD)[:, None] + col
    h = tl.load(hs_ptr + s_off, mask=bd_ok, other=0.0)
    c = tl.load(cs_ptr + s_off, mask=bd_ok, other=0.0)
    n = tl.load(ns_ptr + s_off, mask=bd_ok, other=0.0)
    m = tl.load(ms_ptr + s_off, mask=bd_ok, other=0.0)
    hs_p = hs_ptr + s_off
    cs_p = cs_ptr + s_off
    ns_p = ns_ptr + s_off
    ms_p = ms_ptr + s_off
    x_p = wx_ptr + (rows * T * 4 * HD)[:, None] + col
    o_p = out_ptr + (rows * T * HD)[:, None] + col
    mask_p = mask_ptr + rows * T
    reset_p = reset_ptr + rows * T
    HD2 = 2 * HD
    HD3 = 3 * HD
    HD4 = 4 * HD

    for _ in range(T):
        if HAS_RESET:
            rs = (tl.load(reset_p, mask=row_ok, other=0) != 0)[:, None]
            h = tl.where(rs, 0.0, h)
            c = tl.where(rs, 0.0, c)
            n = tl.where(rs, 0.0, n)
            m = tl.where(rs, float("-inf"), m)
        gi = tl.load(x_p, mask=bd_ok, other=0.0).to(tl.float32) + b_i
        gf = tl.load(x_p + HD, mask=bd_ok, other=0.0).to(tl.float32) + b_f
        gz = tl.load(x_p + HD2, mask=bd_ok, other=0.0).to(tl.float32) + b_z
        go = tl.load(x_p + HD3, mask=bd_ok, other=0.0).to(tl.float32) + b_o
        gi += tl.dot(h, R_i, input_precision=DOT_PREC)
        gf += tl.dot(h, R_f, input_precision=DOT_PREC)
        gz += tl.dot(h, R_z, input_precision=DOT_PREC)
        go += tl.dot(h, R_o, input_precision=DOT_PREC)
        h_new, c_new, n_new, m_new = _slstm_cell_fwd(gi, gf, gz, go, c, n, m, EXP_FORGET)
        if HAS_MASK:
            keep = (tl.load(mask_p, mask=row_ok, other=0) != 0)[:, None]
            h = tl.where(keep, h_new, h)
            c = tl.where(keep, c_new, c)
            n = tl.where(keep, n_new, n)
            m = tl.where(keep, m_new, m)
        else:
            h, c, n, m = h_new, c_new, n_new, m_new
        tl.store(o_p, h.to(out_ptr.dtype.element_ty), mask=bd_ok)
        hs_p += HD
        cs_p += HD
        ns_p += HD
        ms_p += HD
        tl.store(hs_p, h, mask=bd_ok)
        tl.store(cs_p, c, mask=bd_ok)
        tl.store(ns_p, n, mask=bd_ok)
        tl.store(ms_p, m, mask=bd_ok)
        x_p += HD4
        o_p += HD
        mask_p += 1
        reset_p += 1


@triton.jit
def slstm_fwd_kernel_streamed(
    wx_ptr, R_ptr, b_ptr, mask_ptr, reset_ptr,
    out_ptr, hs_ptr, cs_ptr, ns_ptr, ms_ptr,
    B, T, H, DH,
    BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_RESET: tl.constexpr, EXP_FORGET: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Forward with R streamed from L2 each step. Grid (ceil(B / BB), H); same buffers as
    ``slstm_fwd_kernel_resident``. The state entering step t is slot t of hs/cs/ns/ms."""
    pid_b = tl.program_id(0)
    hd = tl.program_id(1)
    HD = H * DH
    offs_b = pid_b * BB + tl.arange(0, BB)
    row_ok = offs_b < B
    rows = offs_b.to(tl.int64)
    r_head = R_ptr + hd * DH * 4 * DH
    b_head = b_ptr + hd * 4 * DH
    NT = tl.cdiv(DH, BN)
    NK = tl.cdiv(DH, BK)
    HD2 = 2 * HD
    HD3 = 3 * HD
    DH2 = 2 * DH
    DH3 = 3 * DH
    DH4 = 4 * DH
    # per-row offsets of token 0: state slot 0, wx, out, flags
    s_row = (rows * (T + 1) * HD)[:, None] + hd * DH
    x_row = (rows * T * 4 * HD)[:, None] + hd * DH
    o_row = (rows * T * HD)[:, None] + hd * DH
    mask_p = mask_ptr + rows * T
    reset_p = reset_ptr + rows * T

    for _ in range(T):
        if HAS_RESET:
            rs = (tl.load(reset_p, mask=row_ok, other=0) != 0)[:, None]
        if HAS_MASK:
            keep = (tl.load(mask_p, mask=row_ok, other=0) != 0)[:, None]
        for nt in range(0, NT):
            cols = nt * BN + tl.arange(0, BN)
            col_ok = cols < DH
            bd_ok = row_ok[:, None] & col_ok[None, :]
            acc_i = tl.zeros([BB, BN], dtype=tl.float32)
            acc_f = tl.zeros([BB, BN], dtype=tl.float32)
            acc_z = tl.zeros([BB, BN], dtype=tl.float32)
            acc_o = tl.zeros([BB, BN], dtype=tl.float32)
            for kt in range(0, NK):
                ks = kt * BK + tl.arange(0, BK)
                k_ok = ks < DH
                # h_{t-1} was written by other threads of this program in the previous step
                bk_ok = row_ok[:, None] & k_ok[None, :]
                h_prev = tl.load(hs_ptr + s_row + ks[None, :], mask=bk_ok, other=0.0, cache_modifier=".cg")
                if HAS_RESET:
                    h_prev = tl.where(rs, 0.0, h_prev)
                r_p = r_head + ks[:, None] * DH4 + cols[None, :]
                r_ok = k_ok[:, None] & col_ok[None, :]
                acc_i += tl.dot(h_prev, tl.load(r_p, mask=r_ok, other=0.0).to(tl.float32), input_precision=DOT_PREC)
                acc_f += tl.dot(h_prev, tl.load(r_p + DH, mask=r_ok, other=0.0).to(tl.float32), input_precision=DOT_PREC)
                acc_z += tl.dot(h_prev, tl.load(r_p + DH2, mask=r_ok, other=0.0).to(tl.float32), input_precision=DOT_PREC)
                acc_o += tl.dot(h_prev, tl.load(r_p + DH3, mask=r_ok, other=0.0).to(tl.float32), input_precision=DOT_PREC)
            b_p = b_head + cols[None, :]
            x_p = wx_ptr + x_row + cols[None, :]
            gi = acc_i + tl.load(b_p, mask=col_ok[None, :], other=0.0).to(tl.float32)
            gf = acc_f + tl.load(b_p + DH, mask=col_ok[None, :], other=0.0).to(tl.float32)
            gz = acc_z + tl.load(b_p + DH2, mask=col_ok[None, :], other=0.0).to(tl.float32)
            go = acc_o + tl.load(b_p + DH3, mask=col_ok[None, :], other=0.0).to(tl.float32)
            gi += tl.load(x_p, mask=bd_ok, other=0.0).to(tl.float32)
            gf += tl.load(x_p + HD, mask=bd_ok, other=0.0).to(tl.float32)
            gz += tl.load(x_p + HD2, mask=bd_ok, other=0.0).to(tl.float32)
            go += tl.load(x_p + HD3, mask=bd_ok, other=0.0).to(tl.float32)
            s_off = s_row + cols[None, :]
            h = tl.load(hs_ptr + s_off, mask=bd_ok, other=0.0, cache_modifier=".cg")
            c = tl.load(cs_ptr + s_off, mask=bd_ok, other=0.0, cache_modifier=".cg")
            n = tl.load(ns_ptr + s_off, mask=bd_ok, other=0.0, cache_modifier=".cg")
            m = tl.load(ms_ptr + s_off, mask=bd_ok, other=0.0, cache_modifier=".cg")
            if HAS_RESET:
                h = tl.where(rs, 0.0, h)
                c = tl.where(rs, 0.0, c)
                n = tl.where(rs, 0.0, n)
                m = tl.where(rs, float("-inf"), m)
            h_new, c_new, n_new, m_new = _slstm_cell_fwd(gi, gf, gz, go, c, n, m, EXP_FORGET)
            if HAS_MASK:
                h_new = tl.where(keep, h_new, h)
                c_new = tl.where(keep, c_new, c)
                n_new = tl.where(keep, n_new, n)
                m_new = tl.where(keep, m_new, m)
            tl.store(out_ptr + o_row + cols[None, :], h_new.to(out_ptr.dtype.element_ty), mask=bd_ok)
            s_off += HD
            tl.store(hs_ptr + s_off, h_new, mask=bd_ok)
            tl.store(cs_ptr + s_off, c_new, mask=bd_ok)
            tl.store(ns_ptr + s_off, n_new, mask=bd_ok)
            tl.store(ms_ptr + s_off, m_new, mask=bd_ok)
        s_row += HD
        x_row += 4 * HD
        o_row += HD
        mask_p += 1
        reset_p += 1
        # every thread's h_t must be in memory before any thread reads it at step t + 1
        tl.debug_barrier()


@triton.jit
def slstm_bwd_kernel_resident(
    g_ptr, dg_ptr, R_ptr, dout_ptr, mask_ptr, reset_ptr,
    cs_ptr, ns_ptr, ms_ptr,
    dh_ptr, dc_ptr, dn_ptr, dm_ptr,
    B, T, H, DH,
    BB: tl.constexpr, DP: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_RESET: tl.constexpr, EXP_FORGET: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Reverse time loop with R^T and the carried gradients in registers. Grid (ceil(B / BB), H).

    g (B, T, 4, H, DH) fp32: gate pre-activations; dg (same shape, may alias g): gate
    gradients (written after the pre-activations of the same elements are read);
    dout (B, T, H, DH): gradient w.r.t. the outputs; cs, ns, ms (B, T + 1, H, DH) fp32:
    saved states (slot t enters token t); dh, dc, dn, dm (B, H, DH) fp32: in, the
    gradient w.r.t. the final state; out, w.r.t. the initial state.
    """
    pid_b = tl.program_id(0)
    hd = tl.program_id(1)
    HD = H * DH
    offs_b = pid_b * BB + tl.arange(0, BB)
    offs_d = tl.arange(0, DP)
    row_ok = offs_b < B
    col_ok = offs_d < DH
    bd_ok = row_ok[:, None] & col_ok[None, :]
    rows = offs_b.to(tl.int64)
    col = hd * DH + offs_d[None, :]

    # R_g^T (DP_out, DP_in): element [d, k] = R[hd, k, g, d]
    rd = tl.arange(0, DP)[:, None]
    rk = tl.arange(0, DP)[None, :]
    r_ok = (rk < DH) & (rd < DH)
    r_p = R_ptr + hd * DH * 4 * DH + rk * 4 * DH + rd
    RT_i = tl.load(r_p, mask=r_ok, other=0.0).to(tl.float32)
    RT_f = tl.load(r_p + DH, mask=r_ok, other=0.0).to(tl.float32)
    RT_z = tl.load(r_p + 2 * DH, mask=r_ok, other=0.0).to(tl.float32)
    RT_o = tl.load(r_p + 3 * DH, mask=r_ok, other=0.0).to(tl.float32)

    d_off = rows[:, None] * HD + col
    dh = tl.load(dh_ptr + d_off, mask=bd_ok, other=0.0)
    dc = tl.load(dc_ptr + d_off, mask=bd_ok, other=0.0)
    dn = tl.load(dn_ptr + d_off, mask=bd_ok, other=0.0)
    dm = tl.load(dm_ptr + d_off, mask=bd_ok, other=0.0)

    # pointers at the last token, moving back one token per step
    s_off = (rows * (T + 1) + T - 1)[:, None] * HD + col
    cs_p = cs_ptr + s_off
    ns_p = ns_ptr + s_off
    ms_p = ms_ptr + s_off
    x_off = (rows * T + T - 1)[:, None] * (4 * HD) + col
    g_p = g_ptr + x_off
    dg_p = dg_ptr + x_off
    o_p = dout_ptr + (rows * T + T - 1)[:, None] * HD + col
    mask_p = mask_ptr + rows * T + T - 1
    reset_p = reset_ptr + rows * T + T - 1
    HD2 = 2 * HD
    HD3 = 3 * HD
    HD4 = 4 * HD

    for _ in range(T):
        dh += tl.load(o_p, mask=bd_ok, other=0.0).to(tl.float32)
        c = tl.load(cs_p, mask=bd_ok, other=0.0)
        n = tl.load(ns_p, mask=bd_ok, other=0.0)
        m = tl.load(ms_p, mask=bd_ok, other=0.0)
        if HAS_RESET:
            rs = (tl.load(reset_p, mask=row_ok, other=0) != 0)[:, None]
            c = tl.where(rs, 0.0, c)
            n = tl.where(rs, 0.0, n)
            m = tl.where(rs, float("-inf"), m)
        gi = tl.load(g_p, mask=bd_ok, other=0.0)
        gf = tl.load(g_p + HD, mask=bd_ok, other=0.0)
        gz = tl.load(g_p + HD2, mask=bd_ok, other=0.0)
        go = tl.load(g_p + HD3, mask=bd_ok, other=0.0)
        dgi, dgf, dgz, dgo, dc_p, dn_p, dm_p = _slstm_cell_bwd(gi, gf, gz, go, c, n, m, dh, dc, dn, dm, EXP_FORGET)
        if HAS_MASK:
            # a masked token passes the state (and its gradient) through unchanged
            keep = (tl.load(mask_p, mask=row_ok, other=0) != 0)[:, None]
            dgi = tl.where(keep, dgi, 0.0)
            dgf = tl.where(keep, dgf, 0.0)
            dgz = tl.where(keep, dgz, 0.0)
            dgo = tl.where(keep, dgo, 0.0)
            dc_p = tl.where(keep, dc_p, dc)
            dn_p = tl.where(keep, dn_p, dn)
            dm_p = tl.where(keep, dm_p, dm)
        tl.store(dg_p, dgi, mask=bd_ok)
        tl.store(dg_p + HD, dgf, mask=bd_ok)
        tl.store(dg_p + HD2, dgz, mask=bd_ok)
        tl.store(dg_p + HD3, dgo, mask=bd_ok)
        dh_p = tl.dot(dgi, RT_i, input_precision=DOT_PREC)
        dh_p += tl.dot(dgf, RT_f, input_precision=DOT_PREC)
        dh_p += tl.dot(dgz, RT_z, input_precision=DOT_PREC)
        dh_p += tl.dot(dgo, RT_o, input_precision=DOT_PREC)
        if HAS_MASK:
            dh_p = tl.where(keep, dh_p, dh)
        if HAS_RESET:
            # the state entering a reset token is replaced: nothing reaches the one before
            dh_p = tl.where(rs, 0.0, dh_p)
            dc_p = tl.where(rs, 0.0, dc_p)
            dn_p = tl.where(rs, 0.0, dn_p)
            dm_p = tl.where(rs, 0.0, dm_p)
        dh, dc, dn, dm = dh_p, dc_p, dn_p, dm_p
        cs_p -= HD
        ns_p -= HD
        ms_p -= HD
        g_p -= HD4
        dg_p -= HD4
        o_p -= HD
        mask_p -= 1
        reset_p -= 1

    tl.store(dh_ptr + d_off, dh, mask=bd_ok)
    tl.store(dc_ptr + d_off, dc, mask=bd_ok)
    tl.store(dn_ptr + d_off, dn, mask=bd_ok)
    tl.store(dm_ptr + d_off, dm, mask=bd_ok)


@triton.jit
def slstm_bwd_kernel_streamed(
    g_ptr, dg_ptr, R_ptr, dout_ptr, mask_ptr, reset_ptr,
    cs_ptr, ns_ptr, ms_ptr,
    dh_ptr, dc_ptr, dn_ptr, dm_ptr,
    B, T, H, DH,
    BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_RESET: tl.constexpr, EXP_FORGET: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Reverse time loop with R streamed from L2; same buffers as ``slstm_bwd_kernel_resident``.
    The carried gradients live in dh/dc/dn/dm between steps. Per step: (1) per column
    tile, the pointwise backward (gate gradients into dg, carried dc/dn/dm, and into dh
    the part of dh that bypasses R: all of it for masked rows, else 0); barrier; (2) per
    input tile, dh_{t-1} += sum_g dG_g @ R_g^T; barrier."""
    pid_b = tl.program_id(0)
    hd = tl.program_id(1)
    HD = H * DH
    offs_b = pid_b * BB + tl.arange(0, BB)
    row_ok = offs_b < B
    rows = offs_b.to(tl.int64)
    r_head = R_ptr + hd * DH * 4 * DH
    NT = tl.cdiv(DH, BN)
    NK = tl.cdiv(DH, BK)
    HD2 = 2 * HD
    HD3 = 3 * HD
    DH4 = 4 * DH
    d_row = rows[:, None] * HD + hd * DH
    # per-row offsets of the last token, moving back one token per step
    s_row = (rows * (T + 1) + T - 1)[:, None] * HD + hd * DH
    x_row = (rows * T + T - 1)[:, None] * (4 * HD) + hd * DH
    o_row = (rows * T + T - 1)[:, None] * HD + hd * DH
    mask_p = mask_ptr + rows * T + T - 1
    reset_p = reset_ptr + rows * T + T - 1

    for _ in range(T):
        if HAS_RESET:
            rs = (tl.load(reset_p, mask=row_ok, other=0) != 0)[:, None]
        if HAS_MASK:
            keep = (tl.load(mask_p, mask=row_ok, other=0) != 0)[:, None]
        # (1) pointwise backward per column tile
        for nt in range(0, NT):
            cols = nt * BN + tl.arange(0, BN)
            col_ok = cols < DH
            bd_ok = row_ok[:, None] & col_ok[None, :]
            d_off = d_row + cols[None, :]
            dh = tl.load(dh_ptr + d_off, mask=bd_ok, other=0.0, cache_modifier=".cg")
            dh += tl.load(dout_ptr + o_row + cols[None, :], mask=bd_ok, other=0.0).to(tl.float32)
            dc = tl.load(dc_ptr + d_off, mask=bd_ok, other=0.0, cache_modifier=".cg")
            dn = tl.load(dn_ptr + d_off, mask=bd_ok, other=0.0, cache_modifier=".cg")
            dm = tl.load(dm_ptr + d_off, mask=bd_ok, other=0.0, cache_modifier=".cg")
            s_off = s_row + cols[None, :]
            c = tl.load(cs_ptr + s_off, mask=bd_ok, other=0.0)
            n = tl.load(ns_ptr + s_off, mask=bd_ok, other=0.0)
            m = tl.load(ms_ptr + s_off, mask=bd_ok, other=0.0)
            if HAS_RESET:
                c = tl.where(rs, 0.0, c)
                n = tl.where(rs, 0.0, n)
                m = tl.where(rs, float("-inf"), m)
            x_off = x_row + cols[None, :]
            gi = tl.load(g_ptr + x_off, mask=bd_ok, other=0.0)
            gf = tl.load(g_ptr + x_off + HD, mask=bd_ok, other=0.0)
            gz = tl.load(g_ptr + x_off + HD2, mask=bd_ok, other=0.0)
            go = tl.load(g_ptr + x_off + HD3, mask=bd_ok, other=0.0)
            dgi, dgf, dgz, dgo, dc_p, dn_p, dm_p = _slstm_cell_bwd(gi, gf, gz, go, c, n, m, dh, dc, dn, dm, EXP_FORGET)
            dh_pass = tl.zeros([BB, BN], dtype=tl.float32)
            if HAS_MASK:
                dgi = tl.where(keep, dgi, 0.0)
                dgf = tl.where(keep, dgf, 0.0)
                dgz = tl.where(keep, dgz, 0.0)
                dgo = tl.where(keep, dgo, 0.0)
                dc_p = tl.where(keep, dc_p, dc)
                dn_p = tl.where(keep, dn_p, dn)
                dm_p = tl.where(keep, dm_p, dm)
                dh_pass = tl.where(keep, 0.0, dh)
            if HAS_RESET:
                dc_p = tl.where(rs, 0.0, dc_p)
                dn_p = tl.where(rs, 0.0, dn_p)
                dm_p = tl.where(rs, 0.0, dm_p)
            tl.store(dg_ptr + x_off, dgi, mask=bd_ok)
            tl.store(dg_ptr + x_off + HD, dgf, mask=bd_ok)
            tl.store(dg_ptr + x_off + HD2, dgz, mask=bd_ok)
            tl.store(dg_ptr + x_off + HD3, dgo, mask=bd_ok)
            tl.store(dh_ptr + d_off, dh_pass, mask=bd_ok)
            tl.store(dc_ptr + d_off, dc_p, mask=bd_ok)
            tl.store(dn_ptr + d_off, dn_p, mask=bd_ok)
            tl.store(dm_ptr + d_off, dm_p, mask=bd_ok)
        tl.debug_barrier()
        # (2) dh_{t-1}[:, ks] = dh_pass + sum over gates and column tiles of dG @ R^T
        for kt in range(0, NK):
            ks = kt * BK + tl.arange(0, BK)
            k_ok = ks < DH
            bk_ok = row_ok[:, None] & k_ok[None, :]
            acc = tl.load(dh_ptr + d_row + ks[None, :], mask=bk_ok, other=0.0, cache_modifier=".cg")
            for nt in range(0, NT):
                cols = nt * BN + tl.arange(0, BN)
                col_ok = cols < DH
                bd_ok = row_ok[:, None] & col_ok[None, :]
                dg_p = dg_ptr + x_row + cols[None, :]
                # R_g^T tile (BN, BK): element [d, k] = R[hd, k, g, d]
                rt_p = r_head + ks[None, :] * DH4 + cols[:, None]
                rt_ok = col_ok[:, None] & k_ok[None, :]
                for g in tl.static_range(4):
                    dg = tl.load(dg_p + g * HD, mask=bd_ok, other=0.0, cache_modifier=".cg")
                    rt = tl.load(rt_p + g * DH, mask=rt_ok, other=0.0).to(tl.float32)
                    acc += tl.dot(dg, rt, input_precision=DOT_PREC)
            if HAS_RESET:
                acc = tl.where(rs, 0.0, acc)
            tl.store(dh_ptr + d_row + ks[None, :], acc, mask=bk_ok)
        s_row -= HD
        x_row -= 4 * HD
        o_row -= HD
        mask_p -= 1
        reset_p -= 1
        tl.debug_barrier()


# =============================================================================== launchers




class _Config:
    """Variant, block sizes and launch parameters for one head dim (read at call time,
    so tests can force the streamed variant at small Dh)."""

    def __init__(self, Dh: int):
        self.DP = max(16, triton.next_power_of_2(Dh))
        self.resident = self.DP <= RESIDENT_MAX_DH
        self.BB = BLOCK_B
        self.BN = min(STREAM_BN, self.DP)
        self.BK = min(STREAM_BK, self.DP)
        # TODO(gpu): measure num_warps per variant and head dim.
        self.num_warps = 8 if self.DP >= 64 else 4
        self.dot_precision = DOT_PRECISION

    def const(self) -> dict:
        common = {"BB": self.BB, "DOT_PREC": self.dot_precision, "num_warps": self.num_warps}
        if self.resident:
            return {"DP": self.DP, **common}
        return {"BN": self.BN, "BK": self.BK, **common}


def _flag_ptr(flag: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    """Every kernel argument needs a tensor; an absent (never read) flag aliases another."""
    return fallback if flag is None else flag


def slstm_fwd(wx, R, b, state0: SLSTMState, mask, reset, exp_forget: bool, cfg: _Config):
    """Forward launcher on prepared inputs.

    Shapes: wx (B, T, 4, H, Dh), R (H, Dh, 4, Dh), b (H, 4, Dh), contiguous, any of
    fp32/bf16/fp16; state0 = (h, c, n, m) each (B, H, Dh) fp32; mask, reset (B, T) int8
    or None. Returns h (B, T, H, Dh) in wx's dtype and the saved states
    ``S = (hs, cs, ns, ms)``, each (B, T + 1, H, Dh) fp32 (slot 0 = state0).
    """
    B, T, _, H, Dh = wx.shape
    dev = wx.device
    out = launch.empty((B, T, H, Dh), wx.dtype, dev)
    S = launch.empty((4, B, T + 1, H, Dh), torch.float32, dev)
    for s, s0 in zip(S, state0):
        s[:, 0] = s0
    kernel = slstm_fwd_kernel_resident if cfg.resident else slstm_fwd_kernel_streamed
    kernel[(triton.cdiv(B, cfg.BB), H)](
        wx, R, b, _flag_ptr(mask, wx), _flag_ptr(reset, wx),
        out, S[0], S[1], S[2], S[3],
        B, T, H, Dh,
        HAS_MASK=mask is not None, HAS_RESET=reset is not None, EXP_FORGET=exp_forget, **cfg.const(),
    )
    return out, S


def slstm_bwd(wx, R, b, S, mask, reset, dout, dfinal, exp_forget: bool, cfg: _Config, need_dR=True, need_db=True):
    """Backward launcher. ``S`` = the forward's saved states; ``dout`` (B, T, H, Dh) or None;
    ``dfinal`` = gradients w.r.t. the final (h, c, n, m), each (B, H, Dh) or None.

    Returns dwx (wx's dtype), dR, db (fp32, reduced over all tokens; None unless
    ``need_dR`` / ``need_db``) and ``D``, the gradients w.r.t. the initial (h, c, n, m),
    fp32 (4, B, H, Dh).
    """
    B, T, _, H, Dh = wx.shape
    dev = wx.device
    hs, cs, ns, ms = S
    # h entering every token (the empty h after a reset)
    h_prev = hs[:, :T]
    if reset is not None:
        h_prev = torch.where(reset[:, :, None, None] != 0, 0.0, h_prev)
    R32 = R.float()
    # gate pre-activations of every token in one GEMM; overwritten with their gradients
    G = torch.einsum("bthk,hkgd->btghd", h_prev, R32)
    G += wx.float()
    G += b.float().transpose(0, 1)
    G = G.contiguous()
    # gate gradients overwrite G in place; tests give them a NaN-filled buffer of their own
    # so that an element the kernel does not write cannot pass
    dG = launch.empty(G.shape, torch.float32, dev) if launch.POISON_OUTPUTS else G
    D = launch.empty((4, B, H, Dh), torch.float32, dev)
    for d, df in zip(D, dfinal):
        if df is None:
            d.zero_()
        else:
            d.copy_(df)
    dout = torch.zeros(B, T, H, Dh, dtype=wx.dtype, device=dev) if dout is None else dout.contiguous()
    kernel = slstm_bwd_kernel_resident if cfg.resident else slstm_bwd_kernel_streamed
    kernel[(triton.cdiv(B, cfg.BB), H)](
        G, dG, R, dout, _flag_ptr(mask, wx), _flag_ptr(reset, wx),
        cs, ns, ms,
        D[0], D[1], D[2], D[3],
        B, T, H, Dh,
        HAS_MASK=mask is not None, HAS_RESET=reset is not None, EXP_FORGET=exp_forget, **cfg.const(),
    )
    del G
    dR = torch.einsum("bthk,btghd->hkgd", h_prev, dG) if need_dR else None
    db = dG.sum(dim=(0, 1)).transpose(0, 1) if need_db else None
    return dG.to(wx.dtype), dR, db, D


# =============================================================================== autograd


class SLSTMTritonFn(torch.autograd.Function):
    """Autograd wrapper of the launchers on prepared inputs (see ``slstm_fwd``)."""

    @staticmethod
    def forward(ctx, wx, R, b, h0, c0, n0, m0, mask, reset, exp_forget, cfg):
        out, S = slstm_fwd(wx, R, b, SLSTMState(h0, c0, n0, m0), mask, reset, exp_forget, cfg)
        T = wx.shape[1]
        final = tuple(s[:, T].clone() for s in S)
        ctx.save_for_backward(wx, R, b, S, mask, reset)
        ctx.exp_forget = exp_forget
        ctx.cfg = cfg
        ctx.set_materialize_grads(False)
        return (out, *final)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dhT, dcT, dnT, dmT):
        wx, R, b, S, mask, reset = ctx.saved_tensors
        dwx, dR, db, D = slstm_bwd(
            wx, R, b, S, mask, reset, dout, (dhT, dcT, dnT, dmT), ctx.exp_forget, ctx.cfg,
            need_dR=ctx.needs_input_grad[1], need_db=ctx.needs_input_grad[2],
        )
        dR = None if dR is None else dR.to(R.dtype)
        db = None if db is None else db.to(b.dtype)
        return dwx, dR, db, D[0], D[1], D[2], D[3], None, None, None, None


# =============================================================================== public

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def slstm_triton(
    wx: torch.Tensor,
    R: torch.Tensor,
    b: torch.Tensor,
    initial_state: SLSTMState | tuple | None = None,
    forget_gate: str = "sigmoid",
    mask: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, SLSTMState]:
    """sLSTM over a sequence with the fused Triton kernels (forward and backward).

    Same contract as ``naive.slstm_recurrent``.

    Args:
        wx: gate pre-activations from the input ``(B, T, 4, H, Dh)``, gate order i, f, z, o;
            float32, bfloat16 or float16. Any B >= 1, T >= 0, 1 <= Dh <= 1024 (padded
            internally to a power of two >= 16).
        R: recurrent weights ``(H, Dh, 4, Dh)`` (``R[h, k, g, d]``: input unit k to gate g,
            unit d); b: bias ``(H, 4, Dh)``; each float32, bfloat16 or float16.
        initial_state: optional ``(h, c, n, m)``, each ``(B, H, Dh)``, cast to float32;
            None is the empty state (h = c = n = 0, m = -inf). Gradients flow to all four
            (to m only where it is finite and reached: from m = -inf it is 0).
        forget_gate: "sigmoid" (log f' = logsigmoid(f)) or "exp" (log f' = f).
        mask: optional bool ``(B, T)``; False: the token leaves the state unchanged
            (padding) and outputs the carried h.
        reset: optional bool ``(B, T)``; True: the state entering the token is replaced by
            the empty state (applied before ``mask``).
    Returns:
        h ``(B, T, H, Dh)`` in wx's dtype, and the final ``SLSTMState(h, c, n, m)``, each
        ``(B, H, Dh)`` float32. Gradients flowing into the final state are exact.
    Raises:
        ValueError / TypeError on bad shapes, dtypes, devices or options.
    """
    _validate(wx, R, b, forget_gate)
    B, T, _, H, Dh = wx.shape
    device = wx.device
    others = {"R": R, "b": b, "mask": mask, "reset": reset}
    others.update(zip(("initial h", "initial c", "initial n", "initial m"), initial_state or ()))
    for name, t in others.items():
        if t is not None and t.device != device:
            raise ValueError(f"slstm_triton: {name} is on {t.device} but Wx is on {device}; put all inputs on one device")
    if device.type != "cuda" and not launch.interpreted():
        raise ValueError(
            f"slstm_triton: tensors are on {device}; the Triton kernels need CUDA tensors "
            "(or TRITON_INTERPRET=1 set before triton is imported, to debug on CPU); use slstm_recurrent for CPU"
        )
    for name, t in (("Wx", wx), ("R", R), ("b", b)):
        if t.dtype not in _DTYPES:
            raise TypeError(
                f"slstm_triton: {name} must be float32, bfloat16 or float16, got {t.dtype}; use slstm_recurrent for float64"
            )
    if not 1 <= Dh <= MAX_HEAD_DIM:
        raise ValueError(f"slstm_triton: head dim Dh={Dh} is not supported; use 1 <= Dh <= {MAX_HEAD_DIM} (or slstm_recurrent)")
    validate_token_flags(mask, "mask", (B, T), device)
    validate_token_flags(reset, "reset", (B, T), device)
    if initial_state is None:
        z = torch.zeros(B, H, Dh, dtype=torch.float32, device=device)
        h0, c0, n0, m0 = z, z, z, torch.full_like(z, float("-inf"))
    else:
        if len(initial_state) != 4:
            raise ValueError(f"slstm_triton: initial_state must be (h, c, n, m), got {len(initial_state)} tensors")
        for name, t in zip(SLSTMState._fields, initial_state):
            if tuple(t.shape) != (B, H, Dh):
                raise ValueError(f"sLSTM: initial state {name} must be (B, H, Dh) = {(B, H, Dh)}, got {tuple(t.shape)}")
            if not t.is_floating_point():
                raise TypeError(f"slstm_triton: initial state {name} must be a floating-point tensor, got {t.dtype}")
        # differentiable casts: gradients reach the caller's tensors in their dtype
        h0, c0, n0, m0 = (t.float().contiguous() for t in initial_state)
    if T == 0:
        return wx.new_zeros(B, 0, H, Dh), SLSTMState(h0, c0, n0, m0)

    mask_i8 = None if mask is None else mask.to(torch.int8).contiguous()
    reset_i8 = None if reset is None else reset.to(torch.int8).contiguous()
    out, hT, cT, nT, mT = SLSTMTritonFn.apply(
        wx.contiguous(), R.contiguous(), b.contiguous(), h0, c0, n0, m0,
        mask_i8, reset_i8, forget_gate == "exp", _Config(Dh),
    )
    return out, SLSTMState(hT, cT, nT, mT)
