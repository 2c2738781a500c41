"""mLSTM, chunkwise-parallel form in plain PyTorch (the reference for the Triton kernel).

The sequence is cut into chunks of L tokens. Phase 1 runs the recurrence over
chunk boundaries only: each chunk's contribution to the memory is one (Dqk x Dv)
matrix product, so the loop has T/L cheap iterations. Phase 2 computes the chunks'
outputs with the parallel form inside each chunk, seeded with the memory at the
chunk's start (``parallel.mlstm_parallel_core``): all chunks at once, or on CPU in
cache-sized groups of chunks. Cost is O(T L D + T Dqk Dv) instead of the parallel
form's O(T^2 D), forward and backward (the loops walk tensors split once, so autograd
never builds a full-size zero gradient per chunk). The final state is computed only
when asked for.

Any T works: the last chunk is padded with tokens whose input gate is -inf and
whose forget gate is 1 (log f = 0). Such tokens add nothing to the memory and do
not decay it, and being last they cannot influence earlier outputs, so outputs
and the final state are exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import MLSTMState, compute_dtype, prepare_state, validate_inputs, validate_reset
from .parallel import mlstm_parallel_core

#: elements of one (B, H, chunks, L, L) tensor of the intra-chunk part per pass on CPU:
#: 1 MiB of fp32, about one core's L2. Beyond it that part is memory-bound: at B 1, H 4,
#: L 64, fwd+bwd over 256 chunks in one pass took 1.8x longer per chunk than over 16
#: chunks, in groups of 16 chunks 1.1x.
CPU_GROUP_ELEMENTS = 2**18


def _chunk_states(
    k, v, i, logf, state: MLSTMState, reset=None, return_last_state: bool = True
) -> tuple[MLSTMState, MLSTMState | None]:
    """Memory at the start of every chunk, and the final memory (None unless ``return_last_state``).

    Shapes: k ``(B, H, NC, L, Dqk)``, v ``(B, H, NC, L, Dv)``, i, logf ``(B, H, NC, L)``,
    reset (optional bool) ``(B, 1, NC, L)``.
    Returns states with a chunk axis: C ``(B, H, NC, Dqk, Dv)``, n ``(B, H, NC, Dqk)``, m ``(B, H, NC)``.
    """
    C, n, m = state
    NC = k.shape[2]
    cum = torch.cumsum(logf, dim=-1)  # (B, H, NC, L)
    g = cum[..., -1]  # total log decay over each chunk
    # log weight of token j inside its chunk as seen from the chunk end
    log_a = g[..., None] - cum + i  # (B, H, NC, L)
    if reset is not None:
        seg = torch.cumsum(reset.to(torch.int32), dim=-1)  # (B, 1, NC, L)
        # only tokens from the chunk's last reset on reach the chunk end
        log_a = log_a.masked_fill(seg != seg[..., -1:], float("-inf"))
        has_reset = (seg[..., -1] > 0).expand_as(g)  # (B, H, NC)
        # stabiliser base after the last reset r: the empty memory (m = 0) decayed by F_end - F_{r-1}
        excl = F.pad(cum[..., :-1], (1, 0))
        pos = torch.arange(cum.shape[-1], device=cum.device)
        last_reset = torch.where(reset, pos, -1).amax(dim=-1, keepdim=True).expand_as(g[..., None])
        g_reset = g - torch.gather(excl, -1, last_reset.clamp(min=0)).squeeze(-1)  # (B, H, NC)
        resets = zip(has_reset.unbind(-1), g_reset.unbind(-1))
    else:
        resets = [(None, None)] * NC
    a_max = log_a.amax(dim=-1)  # (B, H, NC)
    # Walk chunks unbound once: indexing k[:, :, c] in the loop would make autograd
    # build a full-size zero gradient per chunk, a backward quadratic in NC.
    chunks = zip(k.unbind(2), v.unbind(2), log_a.unbind(2), g.unbind(-1), a_max.unbind(-1), resets)
    Cs, ns, ms = [], [], []
    for c, (k_c, v_c, log_a_c, g_c, a_max_c, (r_c, g_reset_c)) in enumerate(chunks):
        Cs.append(C)
        ns.append(n)
        ms.append(m)
        if c == NC - 1 and not return_last_state:
            # the memory after the last chunk is only the final state
            break
        if r_c is None:
            m_next = torch.maximum(g_c + m, a_max_c)
            decay = torch.exp(g_c + m - m_next)
        else:
            m_next = torch.maximum(torch.where(r_c, g_reset_c, g_c + m), a_max_c)
            # -inf inside the exp (not a where on its output): exp of the unused branch may
            # overflow, and where() would turn its 0 * inf gradient into NaN
            decay = torch.exp(torch.where(r_c, float("-inf"), g_c + m - m_next))
        a = torch.exp(log_a_c - m_next[..., None])  # (B, H, L)
        k_a = k_c * a[..., None]
        C = decay[..., None, None] * C + k_a.transpose(-1, -2) @ v_c
        n = decay[..., None] * n + k_a.sum(dim=-2)
        m = m_next
    starts = MLSTMState(torch.stack(Cs, dim=2), torch.stack(ns, dim=2), torch.stack(ms, dim=2))
    return starts, (MLSTMState(C, n, m) if return_last_state else None)


def mlstm_chunkwise_torch(
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
    """mLSTM over a sequence in the chunkwise-parallel form.

    Args:
        q, k: ``(B, H, T, Dqk)``; v: ``(B, H, T, Dv)``; i, f: ``(B, H, T)`` pre-activations.
        initial_state: optional ``(C (B, H, Dqk, Dv), n (B, H, Dqk), m (B, H))``.
        return_last_state: also return the final state (not computed otherwise).
        chunk_size: tokens per chunk (any positive integer; T need not be a multiple).
        reset: optional bool ``(B, T)``, True where a token starts a new document
            (see ``naive.mlstm_recurrent``); resets may sit anywhere, also on chunk borders.
    Returns:
        h ``(B, H, T, Dv)`` in q's dtype (and the final state in float32/float64).
    """
    validate_inputs(q, k, v, i, f)
    if chunk_size <= 0:
        raise ValueError(f"mLSTM: chunk_size must be positive, got {chunk_size}")
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
    logf = F.logsigmoid(f)
    L = min(chunk_size, T)
    pad = (-T) % L
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        i = F.pad(i, (0, pad), value=float("-inf"))
        logf = F.pad(logf, (0, pad), value=0.0)
        if reset is not None:
            reset = F.pad(reset, (0, pad), value=False)
    NC = (T + pad) // L
    q, k, v = (t.reshape(B, H, NC, L, t.shape[-1]) for t in (q, k, v))
    i, logf = (t.reshape(B, H, NC, L) for t in (i, logf))
    if reset is not None:
        reset = reset.reshape(B, 1, NC, L)
    starts, last = _chunk_states(k, v, i, logf, state, reset, return_last_state)
    # Chunks are independent given their start states: on CPU, run them in groups whose
    # (B, H, group, L, L) tensors stay cache-sized (split once, not indexed, so the
    # backward stays linear). Each chunk's own final state would be a discarded product.
    group = NC if q.device.type != "cpu" else max(1, CPU_GROUP_ELEMENTS // (B * H * L * L))
    groups = zip(*(t.split(group, dim=2) for t in (q, k, v, i, logf, *starts)))
    resets = [None] * -(-NC // group) if reset is None else reset.split(group, dim=2)
    hs = []
    for (q_g, k_g, v_g, i_g, logf_g, *start_g), reset_g in zip(groups, resets):
        h_g, _ = mlstm_parallel_core(
            q_g, k_g, v_g, i_g, logf_g, MLSTMState(*start_g), eps, reset_g, return_last_state=False
        )
        hs.append(h_g)
    h = hs[0] if len(hs) == 1 else torch.cat(hs, dim=2)
    h = h.reshape(B, H, NC * L, Dv)[:, :, :T].to(in_dtype)
    return (h, last) if return_last_state else h
