"""mLSTM, chunkwise-parallel form in Triton: forward and backward kernels.

Same function as ``chunkwise_torch.mlstm_chunkwise_torch`` (and the recurrent
definition in ``naive.py``), including the exact max-stabiliser m of the recurrence,
initial and final states and document boundaries (``reset``).

Design (the "limit_chunk" structure of TFLA / ``mlstm_kernels``, written from the math):

* Gates, on the host in differentiable torch: logf = logsigmoid(f), padded to a
  multiple of the chunk size L (padding tokens: i = -inf, log f = 0, so they neither
  write nor decay the memory), and ``base`` = the cumulative log forget gate inside
  each chunk, restarted at every reset. Autograd maps the kernels' gradient w.r.t.
  ``base`` back to f.
* Forward, kernel ``states`` (grid B*H x Dqk-tiles x Dv-tiles, sequential over chunks):
  the memory (C, n, m) entering every chunk. For the chunk's last token e,
      m_next = max(log w_e, max_j log D_ej),   log D_tj = base_t - base_j + i_j,
      log w_t = base_t + m_c   (base_t alone after a reset in the chunk),
      C_next = exp(log w_e - m_next) C_c + sum_j exp(log D_ej - m_next) k_j v_j^T.
* Forward, kernel ``outputs`` (grid B*H x chunk-sub-blocks x Dv-tiles, all parallel):
  the parallel form inside the chunk seeded with (C_c, n_c, m_c):
      m_t = max(log w_t, max_{j<=t} log D_tj),  S_tj = (q~_t . k_j) exp(log D_tj - m_t),
      num_t = S_t v + w_t C_c^T q~_t,  den_t = sum_j S_tj + w_t n_c . q~_t,
      h_t = num_t / (max(|den_t|, exp(-m_t)) + eps),  w_t = exp(log w_t - m_t).
  It also saves m_t, den_t and, for the backward, how many candidates attain the max.
  Chunks longer than 64 are processed in sub-blocks of 64 x 64 (L = 128, 256).
* Backward: ``states`` runs the recurrence of dC, dn backwards over chunks
  (dC_c = decay_c dC_{c+1} + sum_t w_t q~_t (dh_t / Q_t)^T) and the per-chunk
  scalars P_c = <C_c, dC_c> + <n_c, dn_c>; ``dq``, ``dk``, ``dv`` compute the
  gradients of every chunk in parallel. The gate gradients follow from
      dlogD-row-sums = q_t . dq_t,   dlogD-column-sums = k_j . dk_j
  (the m-fixed part), plus the gradient through the stabilisers: every m_t is a max,
  its gradient goes to the candidate(s) attaining it (ties split evenly). For a token
  output the total derivative w.r.t. m_t is -eps (dh_t . h_t) / Q_t; for the memory at
  a chunk border it is the caller's / next chunk's dm minus P. ``mscan`` carries that
  scalar backwards over chunks. So every gradient is exact, including the ones
  w.r.t. the initial (C, n, m) and the ones flowing in through the final (C, n, m):
  m_T is differentiable (it is a max of gate sums) and its gradient is routed like
  any other.

The chunk states are recomputed in the backward (one cheap sequential pass) rather
than saved, so the autograd graph holds O(B H T) extra floats, not O(B H T/L Dqk Dv).

Dots take their operands in bf16 for bf16 inputs (fp32 accumulation) and in fp32
(IEEE, no TF32) for fp32 and fp16 inputs; fp16 is not used as a dot operand because
the stabilised memory can exceed its range. Under ``TRITON_INTERPRET=1`` (numpy has
no bf16 matmul) bf16 operands are rounded to bf16 and multiplied in fp32, which is
numerically the same as a bf16 tensor-core dot.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .common import MLSTMState, prepare_state, validate_inputs, validate_reset
from .. import launch

SUPPORTED_CHUNK_SIZES = (16, 32, 64, 128, 256)
MAX_HEAD_DIM = 512


# =============================================================================== kernels


@triton.jit
def _dot(a, b, DOT_BF16: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with fp32 accumulation; operands rounded to bf16 when DOT_BF16."""
    if DOT_BF16:
        a = a.to(tl.bfloat16)
        b = b.to(tl.bfloat16)
        if UPCAST:
            out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            out = tl.dot(a, b)
    else:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return out


@triton.jit
def _log_decay(base_t, base_j, i_j, offs_t, offs_j, seg_t, seg_j, HAS_RESET: tl.constexpr):
    """log D_tj = base_t - base_j + i_j for j <= t in one document, else -inf. (BL_t, BL_j)"""
    log_d = base_t[:, None] - base_j[None, :] + i_j[None, :]
    valid = offs_j[None, :] <= offs_t[:, None]
    if HAS_RESET:
        valid = valid & (seg_t[:, None] == seg_j[None, :])
    return tl.where(valid, log_d, float("-inf"))


@triton.jit
def mlstm_chunkwise_fwd_kernel_states(
    k_ptr, v_ptr, base_ptr, i_ptr, seg_ptr, use_ptr,
    C0_ptr, n0_ptr, m0_ptr,
    CS_ptr, NS_ptr, MS_ptr, CT_ptr, nT_ptr, mT_ptr,
    T, Tp, NC, H, DQK, DV,
    L: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_INIT: tl.constexpr, HAS_RESET: tl.constexpr, DOT_BF16: tl.constexpr, UPCAST: tl.constexpr,
):
    """Memory entering every chunk. Grid (B*H, Dqk-tiles, Dv-tiles); loop over chunks.

    CS (B, H, NC, DQK, DV), NS (B, H, NC, DQK), MS (B, H, NC): state entering chunk c;
    CT, nT, mT: the state after the last chunk.
    """
    NB: tl.constexpr = L // BL
    pid_bh = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_v = tl.program_id(2)
    bh = pid_bh.to(tl.int64)
    b = bh // H
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_k = offs_k < DQK
    mask_v = offs_v < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    first_v = pid_v == 0
    # n is computed by every Dv-tile, stored by the first (a vector & scalar mask is built
    # as a vector: the interpreter rejects the broadcast form)
    mask_k_v0 = mask_k & ((offs_k * 0 + pid_v) == 0)
    first_kv = (pid_k == 0) & first_v
    kv_off = offs_k[:, None] * DV + offs_v[None, :]

    if HAS_INIT:
        C = tl.load(C0_ptr + bh * DQK * DV + kv_off, mask=mask_kv, other=0.0).to(tl.float32)
        n = tl.load(n0_ptr + bh * DQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        m = tl.load(m0_ptr + bh).to(tl.float32)
    else:
        C = tl.zeros([BK, BV], dtype=tl.float32)
        n = tl.zeros([BK], dtype=tl.float32)
        m = tl.sum(tl.zeros([BK], dtype=tl.float32), axis=0)

    k_base = k_ptr + bh * T * DQK
    v_base = v_ptr + bh * T * DV
    g_base = bh * Tp
    for c in range(0, NC):
        cs = bh * NC + c
        tl.store(CS_ptr + cs * DQK * DV + kv_off, C, mask=mask_kv)
        tl.store(NS_ptr + cs * DQK + offs_k, n, mask=mask_k_v0)
        tl.store(MS_ptr + cs, m, mask=first_kv)

        t0 = c * L
        last = t0 + L - 1
        base_last = tl.load(base_ptr + g_base + last)
        if HAS_RESET:
            seg_last = tl.load(seg_ptr + b * Tp + last)
            use_last = tl.load(use_ptr + b * Tp + last) != 0
            log_w = tl.where(use_last, base_last + m, base_last)
        else:
            seg_last = 0
            log_w = base_last + m
        # pass 1: the stabiliser of the chunk's last token (gates only)
        m_next = log_w
        for jb in range(NB):
            offs_j = t0 + jb * BL + tl.arange(0, BL)
            base_j = tl.load(base_ptr + g_base + offs_j)
            i_j = tl.load(i_ptr + g_base + offs_j)
            log_a = base_last - base_j + i_j
            if HAS_RESET:
                seg_j = tl.load(seg_ptr + b * Tp + offs_j)
                log_a = tl.where(seg_j == seg_last, log_a, float("-inf"))
            m_next = tl.maximum(m_next, tl.max(log_a, axis=0))
        decay = tl.exp(log_w - m_next)
        if HAS_RESET:
            decay = tl.where(use_last, decay, 0.0)
        C = C * decay
        n = n * decay
        # pass 2: C += sum_j alpha_j k_j v_j^T
        for jb in range(NB):
            offs_j = t0 + jb * BL + tl.arange(0, BL)
            base_j = tl.load(base_ptr + g_base + offs_j)
            i_j = tl.load(i_ptr + g_base + offs_j)
            log_a = base_last - base_j + i_j
            if HAS_RESET:
                seg_j = tl.load(seg_ptr + b * Tp + offs_j)
                log_a = tl.where(seg_j == seg_last, log_a, float("-inf"))
            alpha = tl.exp(log_a - m_next)
            mask_j = offs_j < T
            # (BK, BL) and (BL, BV)
            kT = tl.load(k_base + offs_j[None, :] * DQK + offs_k[:, None], mask=mask_k[:, None] & mask_j[None, :], other=0.0)
            vv = tl.load(v_base + offs_j[:, None] * DV + offs_v[None, :], mask=mask_j[:, None] & mask_v[None, :], other=0.0)
            kT_a = kT.to(tl.float32) * alpha[None, :]
            C += _dot(kT_a, vv, DOT_BF16, UPCAST)
            n += tl.sum(kT_a, axis=1)
        m = m_next

    tl.store(CT_ptr + bh * DQK * DV + kv_off, C, mask=mask_kv)
    tl.store(nT_ptr + bh * DQK + offs_k, n, mask=mask_k_v0)
    tl.store(mT_ptr + bh, m, mask=first_kv)


@triton.jit
def mlstm_chunkwise_fwd_kernel_outputs(
    q_ptr, k_ptr, v_ptr, base_ptr, i_ptr, seg_ptr, use_ptr,
    CS_ptr, NS_ptr, MS_ptr,
    h_ptr, mt_ptr, den_ptr, nties_ptr, wtie_ptr,
    scale, eps,
    T, Tp, NC, H, DQK, DV,
    L: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_RESET: tl.constexpr, DOT_BF16: tl.constexpr, UPCAST: tl.constexpr,
):
    """Outputs of one sub-block of BL tokens of one chunk. Grid (B*H, NC*L/BL, Dv-tiles).

    h (B, H, T, DV); per padded token (B, H, Tp): m_t, den_t (signed, before the
    max with exp(-m)), nties (number of stabiliser candidates equal to m_t) and
    wtie (1 if the memory's candidate log w_t is one of them).
    """
    NB: tl.constexpr = L // BL
    pid_bh = tl.program_id(0)
    pid_q = tl.program_id(1)
    pid_v = tl.program_id(2)
    bh = pid_bh.to(tl.int64)
    b = bh // H
    c = pid_q // NB
    tb = pid_q % NB
    t0 = c * L
    offs_t = t0 + tb * BL + tl.arange(0, BL)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_t = offs_t < T
    mask_v = offs_v < DV
    g_base = bh * Tp
    q_base = q_ptr + bh * T * DQK
    k_base = k_ptr + bh * T * DQK
    v_base = v_ptr + bh * T * DV

    base_t = tl.load(base_ptr + g_base + offs_t)
    m_c = tl.load(MS_ptr + bh * NC + c)
    if HAS_RESET:
        seg_t = tl.load(seg_ptr + b * Tp + offs_t)
        use_t = tl.load(use_ptr + b * Tp + offs_t) != 0
        log_w = tl.where(use_t, base_t + m_c, base_t)
    else:
        seg_t = offs_t
        log_w = base_t + m_c

    # pass 1: stabiliser m_t (gates only)
    m_t = log_w
    for jb in range(0, tb + 1):
        offs_j = t0 + jb * BL + tl.arange(0, BL)
        base_j = tl.load(base_ptr + g_base + offs_j)
        i_j = tl.load(i_ptr + g_base + offs_j)
        if HAS_RESET:
            seg_j = tl.load(seg_ptr + b * Tp + offs_j)
        else:
            seg_j = offs_j
        log_d = _log_decay(base_t, base_j, i_j, offs_t, offs_j, seg_t, seg_j, HAS_RESET)
        m_t = tl.maximum(m_t, tl.max(log_d, axis=1))

    # pass 2: intra-chunk attention
    num = tl.zeros([BL, BV], dtype=tl.float32)
    den = tl.zeros([BL], dtype=tl.float32)
    wtie = tl.where(log_w == m_t, 1.0, 0.0)
    nties = wtie
    for jb in range(0, tb + 1):
        offs_j = t0 + jb * BL + tl.arange(0, BL)
        mask_j = offs_j < T
        base_j = tl.load(base_ptr + g_base + offs_j)
        i_j = tl.load(i_ptr + g_base + offs_j)
        if HAS_RESET:
            seg_j = tl.load(seg_ptr + b * Tp + offs_j)
        else:
            seg_j = offs_j
        log_d = _log_decay(base_t, base_j, i_j, offs_t, offs_j, seg_t, seg_j, HAS_RESET)
        nties += tl.sum(tl.where(log_d == m_t[:, None], 1.0, 0.0), axis=1)
        d = tl.exp(log_d - m_t[:, None])
        s = tl.zeros([BL, BL], dtype=tl.float32)
        for kb in range(0, tl.cdiv(DQK, BK)):
            offs_k = kb * BK + tl.arange(0, BK)
            mask_k = offs_k < DQK
            qq = tl.load(q_base + offs_t[:, None] * DQK + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
            kT = tl.load(k_base + offs_j[None, :] * DQK + offs_k[:, None], mask=mask_k[:, None] & mask_j[None, :], other=0.0)
            s += _dot(qq, kT, DOT_BF16, UPCAST)
        S = s * scale * d
        vv = tl.load(v_base + offs_j[:, None] * DV + offs_v[None, :], mask=mask_j[:, None] & mask_v[None, :], other=0.0)
        num += _dot(S, vv, DOT_BF16, UPCAST)
        den += tl.sum(S, axis=1)

    # contribution of the memory entering the chunk
    w = tl.exp(log_w - m_t)
    if HAS_RESET:
        w = tl.where(use_t, w, 0.0)
    qC = tl.zeros([BL, BV], dtype=tl.float32)
    qn = tl.zeros([BL], dtype=tl.float32)
    cs = bh * NC + c
    for kb in range(0, tl.cdiv(DQK, BK)):
        offs_k = kb * BK + tl.arange(0, BK)
        mask_k = offs_k < DQK
        qq = tl.load(q_base + offs_t[:, None] * DQK + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
        Ct = tl.load(CS_ptr + cs * DQK * DV + offs_k[:, None] * DV + offs_v[None, :], mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        nt = tl.load(NS_ptr + cs * DQK + offs_k, mask=mask_k, other=0.0)
        qC += _dot(qq, Ct, DOT_BF16, UPCAST)
        qn += tl.sum(qq.to(tl.float32) * nt[None, :], axis=1)
    num += (w * scale)[:, None] * qC
    den += w * scale * qn

    q_norm = tl.maximum(tl.abs(den), tl.exp(-m_t)) + eps
    h = num / q_norm[:, None]
    h_base = h_ptr + bh * T * DV
    tl.store(h_base + offs_t[:, None] * DV + offs_v[None, :], h.to(h_ptr.dtype.element_ty), mask=mask_t[:, None] & mask_v[None, :])
    first_v = (offs_t < Tp) & ((offs_t * 0 + pid_v) == 0)
    tl.store(mt_ptr + g_base + offs_t, m_t, mask=first_v)
    tl.store(den_ptr + g_base + offs_t, den, mask=first_v)
    tl.store(nties_ptr + g_base + offs_t, nties, mask=first_v)
    tl.store(wtie_ptr + g_base + offs_t, wtie, mask=first_v)


@triton.jit
def mlstm_chunkwise_bwd_kernel_states(
    q_ptr, dh_ptr, base_ptr, use_ptr, mt_ptr, rq_ptr, dden_ptr,
    CS_ptr, NS_ptr, MS_ptr, dCT_ptr, dnT_ptr,
    dCS_ptr, dNS_ptr, dC0_ptr, dn0_ptr, P_ptr,
    scale,
    T, Tp, NC, H, DQK, DV, NK, NV,
    L: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DFINAL: tl.constexpr, HAS_RESET: tl.constexpr, DOT_BF16: tl.constexpr, UPCAST: tl.constexpr,
):
    """Reverse recurrence of (dC, dn) over chunks. Grid (B*H, Dqk-tiles, Dv-tiles).

    dCS (B, H, NC, DQK, DV), dNS (B, H, NC, DQK): gradient w.r.t. the memory leaving
    chunk c; dC0, dn0: w.r.t. the initial memory; P (B, H, NC, NK, NV): per-tile
    partial sums of <C_c, dC_c> + <n_c, dn_c> (gradient entering chunk c).
    """
    NB: tl.constexpr = L // BL
    pid_bh = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_v = tl.program_id(2)
    bh = pid_bh.to(tl.int64)
    b = bh // H
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_k = offs_k < DQK
    mask_v = offs_v < DV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    first_v = pid_v == 0
    # n is computed by every Dv-tile, stored by the first (a vector & scalar mask is built
    # as a vector: the interpreter rejects the broadcast form)
    mask_k_v0 = mask_k & ((offs_k * 0 + pid_v) == 0)
    kv_off = offs_k[:, None] * DV + offs_v[None, :]

    if HAS_DFINAL:
        dC = tl.load(dCT_ptr + bh * DQK * DV + kv_off, mask=mask_kv, other=0.0).to(tl.float32)
        dn = tl.load(dnT_ptr + bh * DQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    else:
        dC = tl.zeros([BK, BV], dtype=tl.float32)
        dn = tl.zeros([BK], dtype=tl.float32)

    q_base = q_ptr + bh * T * DQK
    dh_base = dh_ptr + bh * T * DV
    g_base = bh * Tp
    for cc in range(0, NC):
        c = NC - 1 - cc
        cs = bh * NC + c
        tl.store(dCS_ptr + cs * DQK * DV + kv_off, dC, mask=mask_kv)
        tl.store(dNS_ptr + cs * DQK + offs_k, dn, mask=mask_k_v0)

        t0 = c * L
        last = t0 + L - 1
        m_c = tl.load(MS_ptr + cs)
        decay = tl.exp(tl.load(base_ptr + g_base + last) + m_c - tl.load(mt_ptr + g_base + last))
        if HAS_RESET:
            decay = tl.where(tl.load(use_ptr + b * Tp + last) != 0, decay, 0.0)
        dC = dC * decay
        dn = dn * decay
        for tb in range(NB):
            offs_t = t0 + tb * BL + tl.arange(0, BL)
            mask_t = offs_t < T
            base_t = tl.load(base_ptr + g_base + offs_t)
            m_t = tl.load(mt_ptr + g_base + offs_t)
            rq = tl.load(rq_ptr + g_base + offs_t)
            dden = tl.load(dden_ptr + g_base + offs_t)
            w = tl.exp(base_t + m_c - m_t) * scale
            if HAS_RESET:
                w = tl.where(tl.load(use_ptr + b * Tp + offs_t) != 0, w, 0.0)
            qT = tl.load(q_base + offs_t[None, :] * DQK + offs_k[:, None], mask=mask_k[:, None] & mask_t[None, :], other=0.0)
            dh = tl.load(dh_base + offs_t[:, None] * DV + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
            qT_w = qT.to(tl.float32) * w[None, :]
            dC += _dot(qT_w, dh.to(tl.float32) * rq[:, None], DOT_BF16, UPCAST)
            dn += tl.sum(qT_w * dden[None, :], axis=1)
        Ct = tl.load(CS_ptr + cs * DQK * DV + kv_off, mask=mask_kv, other=0.0)
        nt = tl.load(NS_ptr + cs * DQK + offs_k, mask=mask_k, other=0.0)
        p = tl.sum(tl.sum(Ct * dC, axis=1), axis=0)
        p += tl.where(first_v, tl.sum(nt * dn, axis=0), 0.0)
        tl.store(P_ptr + (cs * NK + pid_k) * NV + pid_v, p)

    tl.store(dC0_ptr + bh * DQK * DV + kv_off, dC, mask=mask_kv)
    tl.store(dn0_ptr + bh * DQK + offs_k, dn, mask=mask_k_v0)


@triton.jit
def mlstm_chunkwise_bwd_kernel_mscan(
    P_ptr, R_ptr, beta_ptr, dmlast_ptr, dmT_ptr, mnode_ptr, dm0_ptr,
    BH, NC,
    BLOCK: tl.constexpr, HAS_DFINAL: tl.constexpr,
):
    """Gradient w.r.t. the stabiliser m at every chunk border, backwards over chunks.

    For the memory entering chunk c:  dm_c = P_c + R_c + beta_c * M_{c+1},
    M_{c+1} = dm_{c+1} - P_{c+1} + dmt_last_c  (the total derivative w.r.t. the
    stabiliser of chunk c's last token), dm_NC = the caller's dm_T.
    P (BH, NC+1), R, beta, dmlast, mnode (BH, NC), dmT, dm0 (BH). Grid (cdiv(BH, BLOCK),).
    """
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < BH
    offs64 = offs.to(tl.int64)
    if HAS_DFINAL:
        dm = tl.load(dmT_ptr + offs64, mask=mask, other=0.0)
    else:
        dm = tl.zeros([BLOCK], dtype=tl.float32)
    for cc in range(0, NC):
        c = NC - 1 - cc
        mnode = dm - tl.load(P_ptr + offs64 * (NC + 1) + c + 1, mask=mask, other=0.0)
        mnode += tl.load(dmlast_ptr + offs64 * NC + c, mask=mask, other=0.0)
        tl.store(mnode_ptr + offs64 * NC + c, mnode, mask=mask)
        dm = tl.load(P_ptr + offs64 * (NC + 1) + c, mask=mask, other=0.0) + tl.load(R_ptr + offs64 * NC + c, mask=mask, other=0.0)
        dm += tl.load(beta_ptr + offs64 * NC + c, mask=mask, other=0.0) * mnode
    tl.store(dm0_ptr + offs64, dm, mask=mask)


@triton.jit
def mlstm_chunkwise_bwd_kernel_dq(
    k_ptr, v_ptr, dh_ptr, base_ptr, i_ptr, seg_ptr, use_ptr, mt_ptr, rq_ptr, dden_ptr,
    CS_ptr, NS_ptr, MS_ptr, dq_ptr,
    scale,
    T, Tp, NC, H, DQK, DV,
    L: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_RESET: tl.constexpr, DOT_BF16: tl.constexpr, UPCAST: tl.constexpr,
):
    """dq (fp32) of one sub-block of a chunk. Grid (B*H, NC*L/BL, Dqk-tiles).

    dq_t = scale [sum_j dS_tj D_tj k_j + w_t (C_c dnum_t + dden_t n_c)],
    dS_tj = dnum_t . v_j + dden_t,  dnum_t = dh_t / Q_t.
    """
    NB: tl.constexpr = L // BL
    pid_bh = tl.program_id(0)
    pid_q = tl.program_id(1)
    pid_k = tl.program_id(2)
    bh = pid_bh.to(tl.int64)
    b = bh // H
    c = pid_q // NB
    tb = pid_q % NB
    t0 = c * L
    offs_t = t0 + tb * BL + tl.arange(0, BL)
    offs_k = pid_k * BK + tl.arange(0, BK)
    mask_t = offs_t < T
    mask_k = offs_k < DQK
    g_base = bh * Tp
    k_base = k_ptr + bh * T * DQK
    v_base = v_ptr + bh * T * DV
    dh_base = dh_ptr + bh * T * DV

    base_t = tl.load(base_ptr + g_base + offs_t)
    m_t = tl.load(mt_ptr + g_base + offs_t)
    rq = tl.load(rq_ptr + g_base + offs_t)
    dden = tl.load(dden_ptr + g_base + offs_t)
    m_c = tl.load(MS_ptr + bh * NC + c)
    if HAS_RESET:
        seg_t = tl.load(seg_ptr + b * Tp + offs_t)
    else:
        seg_t = offs_t

    acc = tl.zeros([BL, BK], dtype=tl.float32)
    for jb in range(0, tb + 1):
        offs_j = t0 + jb * BL + tl.arange(0, BL)
        mask_j = offs_j < T
        base_j = tl.load(base_ptr + g_base + offs_j)
        i_j = tl.load(i_ptr + g_base + offs_j)
        if HAS_RESET:
            seg_j = tl.load(seg_ptr + b * Tp + offs_j)
        else:
            seg_j = offs_j
        d = tl.exp(_log_decay(base_t, base_j, i_j, offs_t, offs_j, seg_t, seg_j, HAS_RESET) - m_t[:, None])
        dhv = tl.zeros([BL, BL], dtype=tl.float32)
        for vb in range(0, tl.cdiv(DV, BV)):
            offs_v = vb * BV + tl.arange(0, BV)
            mask_v = offs_v < DV
            dh = tl.load(dh_base + offs_t[:, None] * DV + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
            vT = tl.load(v_base + offs_j[None, :] * DV + offs_v[:, None], mask=mask_v[:, None] & mask_j[None, :], other=0.0)
            dhv += _dot(dh, vT, DOT_BF16, UPCAST)
        dSD = (dhv * rq[:, None] + dden[:, None]) * d
        kk = tl.load(k_base + offs_j[:, None] * DQK + offs_k[None, :], mask=mask_j[:, None] & mask_k[None, :], other=0.0)
        acc += _dot(dSD, kk, DOT_BF16, UPCAST)

    # memory entering the chunk
    w = tl.exp(base_t + m_c - m_t)
    if HAS_RESET:
        w = tl.where(tl.load(use_ptr + b * Tp + offs_t) != 0, w, 0.0)
    cs = bh * NC + c
    cd = tl.zeros([BL, BK], dtype=tl.float32)
    for vb in range(0, tl.cdiv(DV, BV)):
        offs_v = vb * BV + tl.arange(0, BV)
        mask_v = offs_v < DV
        dh = tl.load(dh_base + offs_t[:, None] * DV + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
        CT = tl.load(CS_ptr + cs * DQK * DV + offs_k[None, :] * DV + offs_v[:, None], mask=mask_v[:, None] & mask_k[None, :], other=0.0)
        cd += _dot(dh.to(tl.float32) * rq[:, None], CT, DOT_BF16, UPCAST)
    nt = tl.load(NS_ptr + cs * DQK + offs_k, mask=mask_k, other=0.0)
    acc += w[:, None] * cd + (w * dden)[:, None] * nt[None, :]
    dq_base = dq_ptr + bh * T * DQK
    tl.store(dq_base + offs_t[:, None] * DQK + offs_k[None, :], acc * scale, mask=mask_t[:, None] & mask_k[None, :])


@triton.jit
def mlstm_chunkwise_bwd_kernel_dk(
    q_ptr, k_ptr, v_ptr, dh_ptr, base_ptr, i_ptr, seg_ptr, mt_ptr, rq_ptr, dden_ptr, rn_ptr,
    dCS_ptr, dNS_ptr, dk_ptr, route_ptr,
    scale,
    T, Tp, NC, H, DQK, DV,
    L: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_RESET: tl.constexpr, DOT_BF16: tl.constexpr, UPCAST: tl.constexpr,
):
    """dk (fp32) of one key sub-block of a chunk. Grid (B*H, NC*L/BL, Dqk-tiles).

    dk_j = scale sum_t dS_tj D_tj q_t + alpha_j (dC_{c+1} v_j + dn_{c+1}), alpha_j = D_ej
    for the chunk's last token e. The Dqk-tile-0 programs also write route_j =
    sum_t rn_t [log D_tj == m_t]: the stabiliser gradient routed to key j.
    """
    NB: tl.constexpr = L // BL
    pid_bh = tl.program_id(0)
    pid_q = tl.program_id(1)
    pid_k = tl.program_id(2)
    bh = pid_bh.to(tl.int64)
    b = bh // H
    c = pid_q // NB
    jb = pid_q % NB
    t0 = c * L
    offs_j = t0 + jb * BL + tl.arange(0, BL)
    offs_k = pid_k * BK + tl.arange(0, BK)
    mask_j = offs_j < T
    mask_k = offs_k < DQK
    g_base = bh * Tp
    q_base = q_ptr + bh * T * DQK
    v_base = v_ptr + bh * T * DV
    dh_base = dh_ptr + bh * T * DV

    base_j = tl.load(base_ptr + g_base + offs_j)
    i_j = tl.load(i_ptr + g_base + offs_j)
    if HAS_RESET:
        seg_j = tl.load(seg_ptr + b * Tp + offs_j)
    else:
        seg_j = offs_j

    acc = tl.zeros([BL, BK], dtype=tl.float32)
    route = tl.zeros([BL], dtype=tl.float32)
    for tb in range(jb, NB):
        offs_t = t0 + tb * BL + tl.arange(0, BL)
        mask_t = offs_t < T
        base_t = tl.load(base_ptr + g_base + offs_t)
        m_t = tl.load(mt_ptr + g_base + offs_t)
        rq = tl.load(rq_ptr + g_base + offs_t)
        dden = tl.load(dden_ptr + g_base + offs_t)
        rn = tl.load(rn_ptr + g_base + offs_t)
        if HAS_RESET:
            seg_t = tl.load(seg_ptr + b * Tp + offs_t)
        else:
            seg_t = offs_t
        log_d = _log_decay(base_t, base_j, i_j, offs_t, offs_j, seg_t, seg_j, HAS_RESET)
        route += tl.sum(tl.where(log_d == m_t[:, None], rn[:, None], 0.0), axis=0)
        d = tl.exp(log_d - m_t[:, None])
        dhv = tl.zeros([BL, BL], dtype=tl.float32)
        for vb in range(0, tl.cdiv(DV, BV)):
            offs_v = vb * BV + tl.arange(0, BV)
            mask_v = offs_v < DV
            dh = tl.load(dh_base + offs_t[:, None] * DV + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
            vT = tl.load(v_base + offs_j[None, :] * DV + offs_v[:, None], mask=mask_v[:, None] & mask_j[None, :], other=0.0)
            dhv += _dot(dh, vT, DOT_BF16, UPCAST)
        dSD = (dhv * rq[:, None] + dden[:, None]) * d
        qq = tl.load(q_base + offs_t[:, None] * DQK + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
        acc += _dot(tl.trans(dSD), qq, DOT_BF16, UPCAST)
    acc = acc * scale

    # the chunk's contribution to the memory leaving it
    last = t0 + L - 1
    log_a = tl.load(base_ptr + g_base + last) - base_j + i_j
    if HAS_RESET:
        log_a = tl.where(seg_j == tl.load(seg_ptr + b * Tp + last), log_a, float("-inf"))
    alpha = tl.exp(log_a - tl.load(mt_ptr + g_base + last))
    cs = bh * NC + c
    y = tl.zeros([BL, BK], dtype=tl.float32)
    for vb in range(0, tl.cdiv(DV, BV)):
        offs_v = vb * BV + tl.arange(0, BV)
        mask_v = offs_v < DV
        vv = tl.load(v_base + offs_j[:, None] * DV + offs_v[None, :], mask=mask_j[:, None] & mask_v[None, :], other=0.0)
        dCT = tl.load(dCS_ptr + cs * DQK * DV + offs_k[None, :] * DV + offs_v[:, None], mask=mask_v[:, None] & mask_k[None, :], other=0.0)
        y += _dot(vv, dCT, DOT_BF16, UPCAST)
    dnt = tl.load(dNS_ptr + cs * DQK + offs_k, mask=mask_k, other=0.0)
    acc += alpha[:, None] * (y + dnt[None, :])
    dk_base = dk_ptr + bh * T * DQK
    tl.store(dk_base + offs_j[:, None] * DQK + offs_k[None, :], acc, mask=mask_j[:, None] & mask_k[None, :])
    tl.store(route_ptr + g_base + offs_j, route, mask=(offs_j < Tp) & ((offs_j * 0 + pid_k) == 0))


@triton.jit
def mlstm_chunkwise_bwd_kernel_dv(
    q_ptr, k_ptr, dh_ptr, base_ptr, i_ptr, seg_ptr, mt_ptr, rq_ptr,
    dCS_ptr, dv_ptr,
    scale,
    T, Tp, NC, H, DQK, DV,
    L: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_RESET: tl.constexpr, DOT_BF16: tl.constexpr, UPCAST: tl.constexpr,
):
    """dv of one key sub-block of a chunk. Grid (B*H, NC*L/BL, Dv-tiles).

    dv_j = sum_t S_tj dnum_t + alpha_j dC_{c+1}^T k_j.
    """
    NB: tl.constexpr = L // BL
    pid_bh = tl.program_id(0)
    pid_q = tl.program_id(1)
    pid_v = tl.program_id(2)
    bh = pid_bh.to(tl.int64)
    b = bh // H
    c = pid_q // NB
    jb = pid_q % NB
    t0 = c * L
    offs_j = t0 + jb * BL + tl.arange(0, BL)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_j = offs_j < T
    mask_v = offs_v < DV
    g_base = bh * Tp
    q_base = q_ptr + bh * T * DQK
    k_base = k_ptr + bh * T * DQK
    dh_base = dh_ptr + bh * T * DV

    base_j = tl.load(base_ptr + g_base + offs_j)
    i_j = tl.load(i_ptr + g_base + offs_j)
    if HAS_RESET:
        seg_j = tl.load(seg_ptr + b * Tp + offs_j)
    else:
        seg_j = offs_j

    acc = tl.zeros([BL, BV], dtype=tl.float32)
    for tb in range(jb, NB):
        offs_t = t0 + tb * BL + tl.arange(0, BL)
        mask_t = offs_t < T
        base_t = tl.load(base_ptr + g_base + offs_t)
        m_t = tl.load(mt_ptr + g_base + offs_t)
        rq = tl.load(rq_ptr + g_base + offs_t)
        if HAS_RESET:
            seg_t = tl.load(seg_ptr + b * Tp + offs_t)
        else:
            seg_t = offs_t
        d = tl.exp(_log_decay(base_t, base_j, i_j, offs_t, offs_j, seg_t, seg_j, HAS_RESET) - m_t[:, None])
        s = tl.zeros([BL, BL], dtype=tl.float32)
        for kb in range(0, tl.cdiv(DQK, BK)):
            offs_k = kb * BK + tl.arange(0, BK)
            mask_k = offs_k < DQK
            qq = tl.load(q_base + offs_t[:, None] * DQK + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
            kT = tl.load(k_base + offs_j[None, :] * DQK + offs_k[:, None], mask=mask_k[:, None] & mask_j[None, :], other=0.0)
            s += _dot(qq, kT, DOT_BF16, UPCAST)
        S = s * scale * d
        dh = tl.load(dh_base + offs_t[:, None] * DV + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
        acc += _dot(tl.trans(S), dh.to(tl.float32) * rq[:, None], DOT_BF16, UPCAST)

    last = t0 + L - 1
    log_a = tl.load(base_ptr + g_base + last) - base_j + i_j
    if HAS_RESET:
        log_a = tl.where(seg_j == tl.load(seg_ptr + b * Tp + last), log_a, float("-inf"))
    alpha = tl.exp(log_a - tl.load(mt_ptr + g_base + last))
    cs = bh * NC + c
    z = tl.zeros([BL, BV], dtype=tl.float32)
    for kb in range(0, tl.cdiv(DQK, BK)):
        offs_k = kb * BK + tl.arange(0, BK)
        mask_k = offs_k < DQK
        kk = tl.load(k_base + offs_j[:, None] * DQK + offs_k[None, :], mask=mask_j[:, None] & mask_k[None, :], other=0.0)
        dCt = tl.load(dCS_ptr + cs * DQK * DV + offs_k[:, None] * DV + offs_v[None, :], mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        z += _dot(kk, dCt, DOT_BF16, UPCAST)
    acc += alpha[:, None] * z
    dv_base = dv_ptr + bh * T * DV
    tl.store(dv_base + offs_j[:, None] * DV + offs_v[None, :], acc.to(dv_ptr.dtype.element_ty), mask=mask_j[:, None] & mask_v[None, :])


# =============================================================================== launchers




class _Config:
    """Block sizes and launch parameters for one call (all block sizes powers of two >= 16)."""

    def __init__(self, L: int, Dqk: int, Dv: int, dtype: torch.dtype):
        self.L = L
        # sub-blocks of at most 64 x 64 tokens inside a chunk keep the (BL, BL) tiles in registers
        self.BL = min(L, 64)
        self.BK = min(max(16, triton.next_power_of_2(Dqk)), 64)
        self.BV = min(max(16, triton.next_power_of_2(Dv)), 64)
        self.NK = triton.cdiv(Dqk, self.BK)
        self.NV = triton.cdiv(Dv, self.BV)
        self.dot_bf16 = dtype == torch.bfloat16
        self.upcast = launch.interpreted()
        # TODO(gpu): measure num_warps / num_stages / BL per head dim on H100. Offline ptxas
        # (sm_90, 8 warps, 64 x 64 tiles) reports no spills for bf16 but 0.6-2.7 KB of spills
        # for fp32 (IEEE dots without tensor cores) in outputs/dq/dk/dv: try BL = 32 for fp32.
        big = self.BL * max(self.BK, self.BV) >= 64 * 64
        self.launch = {"num_warps": 8 if big else 4, "num_stages": 2}

    def const(self) -> dict:
        return {"L": self.L, "BL": self.BL, "BK": self.BK, "BV": self.BV, "DOT_BF16": self.dot_bf16, "UPCAST": self.upcast}


def _gate_ptrs(seg, use, fallback):
    """Every kernel argument needs a tensor; without resets seg/use (never read) alias another."""
    return (fallback, fallback) if seg is None else (seg, use)


def _fwd_states(k, v, i_pad, base, seg, use, C0, n0, m0, cfg: _Config):
    """Launch the states kernel: memory entering every chunk and after the last one."""
    B, H, T, Dqk = k.shape
    Dv = v.shape[-1]
    Tp = i_pad.shape[-1]
    NC = Tp // cfg.L
    dev = k.device
    CS = launch.empty((B, H, NC, Dqk, Dv), torch.float32, dev)
    NS = launch.empty((B, H, NC, Dqk), torch.float32, dev)
    MS = launch.empty((B, H, NC), torch.float32, dev)
    CT = launch.empty((B, H, Dqk, Dv), torch.float32, dev)
    nT = launch.empty((B, H, Dqk), torch.float32, dev)
    mT = launch.empty((B, H), torch.float32, dev)
    seg_p, use_p = _gate_ptrs(seg, use, i_pad)
    has_init = C0 is not None
    mlstm_chunkwise_fwd_kernel_states[(B * H, cfg.NK, cfg.NV)](
        k, v, base, i_pad, seg_p, use_p,
        C0 if has_init else CS, n0 if has_init else NS, m0 if has_init else MS,
        CS, NS, MS, CT, nT, mT,
        T, Tp, NC, H, Dqk, Dv,
        HAS_INIT=has_init, HAS_RESET=seg is not None, **cfg.const(), **cfg.launch,
    )
    return CS, NS, MS, CT, nT, mT


def mlstm_chunkwise_fwd(q, k, v, i_pad, base, seg, use, C0, n0, m0, eps: float, cfg: _Config):
    """Forward launcher on prepared inputs.

    Shapes: q, k (B, H, T, Dqk), v (B, H, T, Dv) contiguous; i_pad, base (B, H, Tp) fp32
    with Tp a multiple of the chunk size; seg, use (B, Tp) int32 or None (no resets);
    C0 (B, H, Dqk, Dv), n0 (B, H, Dqk), m0 (B, H) fp32 or None.
    Returns h (B, H, T, Dv) in q's dtype, the final (C, n, m) in fp32, and the per-token
    m_t, den_t, nties, wtie (B, H, Tp) the backward needs.
    """
    B, H, T, Dqk = q.shape
    Dv = v.shape[-1]
    Tp = i_pad.shape[-1]
    NC = Tp // cfg.L
    dev = q.device
    CS, NS, MS, CT, nT, mT = _fwd_states(k, v, i_pad, base, seg, use, C0, n0, m0, cfg)
    h = launch.empty((B, H, T, Dv), q.dtype, dev)
    mt, den, nties, wtie = (launch.empty((B, H, Tp), torch.float32, dev) for _ in range(4))
    seg_p, use_p = _gate_ptrs(seg, use, i_pad)
    mlstm_chunkwise_fwd_kernel_outputs[(B * H, NC * (cfg.L // cfg.BL), cfg.NV)](
        q, k, v, base, i_pad, seg_p, use_p,
        CS, NS, MS,
        h, mt, den, nties, wtie,
        Dqk**-0.5, eps,
        T, Tp, NC, H, Dqk, Dv,
        HAS_RESET=seg is not None, **cfg.const(), **cfg.launch,
    )
    return h, (CT, nT, mT), (mt, den, nties, wtie)


def mlstm_chunkwise_bwd(q, k, v, i_pad, base, seg, use, C0, n0, m0, h, saved, final, dh, dfinal, eps: float, cfg: _Config):
    """Backward launcher. ``saved`` = (m_t, den_t, nties, wtie) of the forward, ``final`` =
    the final (C, n, m); ``dh`` (B, H, T, Dv) or None; ``dfinal`` = (dC_T, dn_T, dm_T),
    each None when the caller's loss does not use it.

    Returns dq, dk (q's dtype), dv, d(i_pad), d(base) (B, H, Tp) fp32, and dC0, dn0, dm0
    (None without an initial state).
    """
    B, H, T, Dqk = q.shape
    Dv = v.shape[-1]
    Tp = i_pad.shape[-1]
    L = cfg.L
    NC = Tp // L
    NB = L // cfg.BL
    dev = q.device
    mt, den, nties, wtie = saved
    CT, nT, _ = final
    dCT, dnT, dmT = dfinal
    has_dfinal = any(t is not None for t in dfinal)
    if has_dfinal:
        dCT = torch.zeros_like(CT) if dCT is None else dCT.float().contiguous()
        dnT = torch.zeros_like(nT) if dnT is None else dnT.float().contiguous()
        dmT = torch.zeros(B, H, dtype=torch.float32, device=dev) if dmT is None else dmT.float().contiguous()
    if dh is None:
        dh = torch.zeros_like(h)
    dh = dh.contiguous()
    seg_p, use_p = _gate_ptrs(seg, use, i_pad)
    has_reset = seg is not None

    # per-token scalars of the normaliser Q_t = max(|den_t|, exp(-m_t)) + eps
    hd = (dh.float() * h.float()).sum(-1)
    hd = F.pad(hd, (0, Tp - T))
    exp_neg_m = torch.exp(-mt)
    rq = 1.0 / (torch.maximum(den.abs(), exp_neg_m) + eps)
    hd_rq = hd * rq
    dden = torch.where(den.abs() > exp_neg_m, -hd_rq * torch.sign(den), 0.0)
    # total derivative of the outputs w.r.t. their stabiliser m_t
    dmt = -eps * hd_rq

    # memory entering every chunk (recomputed) and the reverse recurrence of (dC, dn)
    CS, NS, MS, _, _, _ = _fwd_states(k, v, i_pad, base, seg, use, C0, n0, m0, cfg)
    dCS = launch.empty((B, H, NC, Dqk, Dv), torch.float32, dev)
    dNS = launch.empty((B, H, NC, Dqk), torch.float32, dev)
    dC0 = launch.empty((B, H, Dqk, Dv), torch.float32, dev)
    dn0 = launch.empty((B, H, Dqk), torch.float32, dev)
    P_part = launch.empty((B, H, NC, cfg.NK, cfg.NV), torch.float32, dev)
    mlstm_chunkwise_bwd_kernel_states[(B * H, cfg.NK, cfg.NV)](
        q, dh, base, use_p, mt, rq, dden,
        CS, NS, MS, dCT if has_dfinal else CT, dnT if has_dfinal else nT,
        dCS, dNS, dC0, dn0, P_part,
        Dqk**-0.5,
        T, Tp, NC, H, Dqk, Dv, cfg.NK, cfg.NV,
        HAS_DFINAL=has_dfinal, HAS_RESET=has_reset, **cfg.const(), **cfg.launch,
    )
    P = P_part.sum(dim=(-1, -2))
    if has_dfinal:
        P_end = (CT * dCT).sum(dim=(-1, -2)) + (nT * dnT).sum(-1)
    else:
        P_end = torch.zeros(B, H, dtype=torch.float32, device=dev)
    P = torch.cat([P, P_end[..., None]], dim=-1).contiguous()  # (B, H, NC + 1)

    # gradient through the chunk-border stabilisers, backwards over chunks
    use_f = torch.ones(1, 1, Tp, device=dev) if use is None else use[:, None, :].float()
    w_frac = (wtie / nties).view(B, H, NC, L)
    use_c = use_f.view(use_f.shape[0], 1, NC, L)
    dmt_c = dmt.view(B, H, NC, L)
    R = (use_c * w_frac * dmt_c)[..., : L - 1].sum(-1).contiguous()
    beta = (use_c * w_frac)[..., L - 1].contiguous()
    dmlast = dmt_c[..., L - 1].contiguous()
    mnode = launch.empty((B, H, NC), torch.float32, dev)
    dm0 = launch.empty((B, H), torch.float32, dev)
    block = min(triton.next_power_of_2(B * H), 128)
    mlstm_chunkwise_bwd_kernel_mscan[(triton.cdiv(B * H, block),)](
        P, R, beta, dmlast, dmT if has_dfinal else P, mnode, dm0,
        B * H, NC,
        BLOCK=block, HAS_DFINAL=has_dfinal,
    )
    # stabiliser gradient of every token (the chunk-border one for the chunk's last token),
    # split evenly over the candidates that attain the max
    n_tot = dmt_c.clone()
    n_tot[..., L - 1] = mnode
    n_tot = n_tot.view(B, H, Tp)
    rn = (n_tot / nties).contiguous()

    dq = launch.empty((B, H, T, Dqk), torch.float32, dev)
    dk = launch.empty((B, H, T, Dqk), torch.float32, dev)
    dv = launch.empty((B, H, T, Dv), v.dtype, dev)
    route = launch.empty((B, H, Tp), torch.float32, dev)
    scale = Dqk**-0.5
    common = dict(HAS_RESET=has_reset, **cfg.const(), **cfg.launch)
    mlstm_chunkwise_bwd_kernel_dq[(B * H, NC * NB, cfg.NK)](
        k, v, dh, base, i_pad, seg_p, use_p, mt, rq, dden,
        CS, NS, MS, dq,
        scale, T, Tp, NC, H, Dqk, Dv, **common,
    )
    mlstm_chunkwise_bwd_kernel_dk[(B * H, NC * NB, cfg.NK)](
        q, k, v, dh, base, i_pad, seg_p, mt, rq, dden, rn,
        dCS, dNS, dk, route,
        scale, T, Tp, NC, H, Dqk, Dv, **common,
    )
    mlstm_chunkwise_bwd_kernel_dv[(B * H, NC * NB, cfg.NV)](
        q, k, dh, base, i_pad, seg_p, mt, rq,
        dCS, dv,
        scale, T, Tp, NC, H, Dqk, Dv, **common,
    )

    # gate gradients: row sums of dlogD are q . dq, column sums k . dk (m held fixed),
    # plus the stabiliser gradients (n_tot to each token's own cumsum, route to the keys)
    qdq = F.pad((q.float() * dq).sum(-1), (0, Tp - T))
    kdk = F.pad((k.float() * dk).sum(-1), (0, Tp - T))
    d_i = kdk + route
    d_base = qdq - kdk + n_tot - route
    d_base.view(B, H, NC, L)[..., L - 1] += P[..., 1:]
    if C0 is None:
        dC0 = dn0 = dm0 = None
    return dq.to(q.dtype), dk.to(k.dtype), dv, d_i, d_base, dC0, dn0, dm0


# =============================================================================== autograd


class MLSTMChunkwiseTritonFn(torch.autograd.Function):
    """Autograd wrapper of the launchers on prepared inputs (see ``mlstm_chunkwise_fwd``)."""

    @staticmethod
    def forward(ctx, q, k, v, i_pad, base, C0, n0, m0, seg, use, eps, cfg):
        h, final, saved = mlstm_chunkwise_fwd(q, k, v, i_pad, base, seg, use, C0, n0, m0, eps, cfg)
        ctx.save_for_backward(q, k, v, i_pad, base, C0, n0, m0, seg, use, h, *final, *saved)
        ctx.eps = eps
        ctx.cfg = cfg
        ctx.set_materialize_grads(False)
        return (h, *final)

    @staticmethod
    def backward(ctx, dh, dCT, dnT, dmT):
        q, k, v, i_pad, base, C0, n0, m0, seg, use, h, CT, nT, mT, *saved = ctx.saved_tensors
        dq, dk, dv, d_i, d_base, dC0, dn0, dm0 = mlstm_chunkwise_bwd(
            q, k, v, i_pad, base, seg, use, C0, n0, m0, h, saved, (CT, nT, mT), dh, (dCT, dnT, dmT), ctx.eps, ctx.cfg
        )
        return dq, dk, dv, d_i, d_base, dC0, dn0, dm0, None, None, None, None


# =============================================================================== public


def _check_device(tensors: dict, device: torch.device) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"mlstm_chunkwise_triton: {name} is on {t.device} but q is on {device}; put all inputs on one device")


def mlstm_chunkwise_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state: MLSTMState | tuple | None = None,
    return_last_state: bool = False,
    chunk_size: int = 64,
    eps: float = 1e-6,
    reset: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, MLSTMState]:
    """mLSTM over a sequence with the Triton chunkwise kernels (forward and backward).

    Same contract as ``mlstm_chunkwise_torch``.

    Args:
        q, k: ``(B, H, T, Dqk)``; v: ``(B, H, T, Dv)``; float32, bfloat16 or float16, one dtype.
            Any T >= 0 (padded internally); 1 <= Dqk, Dv <= 512, independent (tiles are
            padded internally to powers of two >= 16).
        i, f: ``(B, H, T)`` input / forget gate pre-activations, any float dtype (used in fp32).
        initial_state: optional ``(C (B, H, Dqk, Dv), n (B, H, Dqk), m (B, H))``; cast to
            fp32; gradients flow to all three.
        return_last_state: also return the final state ``MLSTMState(C, n, m)`` in fp32.
            Gradients flowing into it (truncated BPTT) are exact, m included.
        chunk_size: 16, 32, 64, 128 or 256 tokens per chunk.
        eps: added to the normaliser max(|n . q~|, exp(-m)).
        reset: optional bool ``(B, T)``: True where a token starts a new document (the
            memory entering it is emptied; see ``naive.mlstm_recurrent``). Supported in the
            forward and the backward.
    Returns:
        h ``(B, H, T, Dv)`` in q's dtype, and with ``return_last_state`` the final state.
    Raises:
        ValueError / TypeError on bad shapes, dtypes, devices, chunk sizes or head dims.
    """
    validate_inputs(q, k, v, i, f)
    B, H, T, Dqk = q.shape
    Dv = v.shape[-1]
    device = q.device
    state_t = {} if initial_state is None else dict(zip(("initial C", "initial n", "initial m"), initial_state))
    _check_device({"k": k, "v": v, "i": i, "f": f, "reset": reset, **state_t}, device)
    if device.type != "cuda" and not launch.interpreted():
        raise ValueError(
            f"mlstm_chunkwise_triton: tensors are on {device}; the Triton kernels need CUDA tensors "
            "(or TRITON_INTERPRET=1 set before triton is imported, to debug on CPU); "
            "use mlstm_chunkwise_torch for CPU"
        )
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(
            f"mlstm_chunkwise_triton: q, k, v must be float32, bfloat16 or float16, got {q.dtype}; "
            "use mlstm_chunkwise_torch for float64"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"mlstm_chunkwise_triton: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if chunk_size not in SUPPORTED_CHUNK_SIZES:
        raise ValueError(f"mlstm_chunkwise_triton: chunk_size must be one of {SUPPORTED_CHUNK_SIZES}, got {chunk_size}")
    for name, d in (("Dqk", Dqk), ("Dv", Dv)):
        if not 1 <= d <= MAX_HEAD_DIM:
            raise ValueError(
                f"mlstm_chunkwise_triton: head dim {name}={d} is not supported; use 1 <= {name} <= {MAX_HEAD_DIM} "
                "(or mlstm_chunkwise_torch)"
            )
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"mlstm_chunkwise_triton: eps must be a finite number >= 0, got {eps}")
    validate_reset(reset, (B, T), device)
    state = None if initial_state is None else prepare_state(initial_state, B, H, Dqk, Dv, torch.float32, device)
    if T == 0:
        h = v.new_zeros(B, H, 0, Dv)
        if not return_last_state:
            return h
        return h, state if state is not None else prepare_state(None, B, H, Dqk, Dv, torch.float32, device)

    L = chunk_size
    Tp = triton.cdiv(T, L) * L
    NC = Tp // L
    pad = Tp - T
    # gates in differentiable torch: padding tokens (i = -inf, log f = 0) neither write nor decay
    i_pad = F.pad(i.float(), (0, pad), value=float("-inf")).contiguous()
    logf = F.pad(F.logsigmoid(f.float()), (0, pad), value=0.0)
    cum = logf.view(B, H, NC, L).cumsum(-1)
    seg = use = None
    if reset is None:
        base = cum
    else:
        reset_p = F.pad(reset, (0, pad), value=False)
        seg = torch.cumsum(reset_p.to(torch.int32), dim=-1, dtype=torch.int32).contiguous()
        # last reset at or before t inside its chunk (-1: none); base restarts there
        pos = torch.arange(L, device=device)
        last_reset = torch.where(reset_p.view(B, 1, NC, L), pos, -1).cummax(dim=-1).values
        use = (last_reset < 0).view(B, Tp).to(torch.int32).contiguous()
        excl = F.pad(cum[..., :-1], (1, 0))
        anchor = torch.gather(excl, -1, last_reset.clamp(min=0).expand(B, H, NC, L))
        base = torch.where(last_reset >= 0, cum - anchor, cum)
    base = base.reshape(B, H, Tp).contiguous()

    C0 = n0 = m0 = None
    if state is not None:
        C0, n0, m0 = (t.contiguous() for t in state)
    cfg = _Config(L, Dqk, Dv, q.dtype)
    h, CT, nT, mT = MLSTMChunkwiseTritonFn.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), i_pad, base, C0, n0, m0, seg, use, float(eps), cfg
    )
    return (h, MLSTMState(CT, nT, mT)) if return_last_state else h
