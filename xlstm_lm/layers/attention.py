"""Causal self-attention with rotary position embeddings: the Llama attention layer.

q, k, v and output projections (no biases unless ``model.bias``), rotary embeddings
in transformers' Llama convention (``rotate_half``: feature i pairs with i + Dh/2,
frequencies ``theta ** (-2i / Dh)``), grouped-query heads, and
``torch.nn.functional.scaled_dot_product_attention`` with scale ``Dh ** -0.5``.

The layer keeps the contract of the recurrent layers, with the key/value cache as its
state::

    state = (k (B, Hkv, S, Dh), v (B, Hkv, S, Dh), visible (B, S) bool, next_pos (B,) long)

``k`` already carries its rotary position. ``visible`` marks the cached positions later
tokens may attend to: left padding and everything before a document start are kept
in the tensors (rows of one batch share ``S``) but are never visible. ``next_pos`` is
the rotary position of the row's next token: the number of real tokens since its
last document start. Every tensor has the batch as dim 0, so beam search reorders
the cache with ``index_select(0)`` like any recurrent state. Unlike a recurrent
state, ``S`` grows by the number of positions fed in.

So a sequence fed whole, token by token, or in pieces with the state carried gives
the same outputs; a left-padded row gives its own outputs as if alone (padding is
neither attended to nor counted in positions); and in a packed row (``reset``) a
token attends only to its own document, whose positions restart at 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .basic import small_init_, wang_init_

AttentionState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin ``(B, 1, T, Dh)`` of the rotary angles at ``positions (B, T)``.

    Angles are computed in float32 as transformers' ``LlamaRotaryEmbedding`` does (in
    float64 for float64 activations), then cast to ``dtype``; each of the Dh/2
    frequencies appears twice, for feature i and i + Dh/2 (the ``rotate_half`` layout).
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).to(work) / head_dim
    inv_freq = 1.0 / (theta**exponent)  # (Dh/2,)
    freqs = positions[..., None].to(work) * inv_freq  # (B, T, Dh/2)
    angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, Dh)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x (B, H, T, Dh)`` by the angles whose cos and sin are ``(B, 1, T, Dh)``."""
    return x * cos + rotate_half(x) * sin


def token_positions(
    next_pos: torch.Tensor, mask: torch.Tensor | None, reset: torch.Tensor | None, T: int
) -> torch.Tensor:
    """Rotary position of every token ``(B, T)``: the number of real tokens before it in
    its document. The carried ``next_pos (B,)`` counts for the chunk's first document
    only; a ``reset`` starts again from 0; padding (``mask`` False) is not counted (a
    padding token gets the position of the next real one, which nothing reads)."""
    B = next_pos.shape[0]
    real = mask.long() if mask is not None else torch.ones(B, T, dtype=torch.long, device=next_pos.device)
    before = torch.cumsum(real, dim=1) - real  # real tokens before t in this chunk
    if reset is None:
        return next_pos[:, None] + before
    # `before` is non-decreasing, so its running max over the document starts is its
    # value at the last start at or before t
    at_start = torch.where(reset, before, torch.zeros_like(before)).cummax(dim=1).values
    carried = torch.where(torch.cumsum(reset.long(), dim=1) == 0, next_pos[:, None], torch.zeros_like(before))
    return carried + before - at_start


def attention_mask(
    visible: torch.Tensor, mask: torch.Tensor | None, reset: torch.Tensor | None, T: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which keys each query may attend to, and which positions stay visible afterwards.

    visible ``(B, S)``: cached positions later tokens may see. Returns the SDPA mask
    ``(B, 1, T, S + T)`` (True = attend) and the new ``visible (B, S + T)``. A query sees
    the visible cache (unless a document starts at or before it in this chunk) and the
    real tokens up to itself in its own document. Every query also sees itself, so a
    padding query never has an empty row (a softmax over nothing is NaN); no real
    token reads a padding token's output.
    """
    B, S = visible.shape
    device = visible.device
    idx = torch.arange(T, device=device)
    causal = idx[None, :] <= idx[:, None]  # (T, T): query t, key j
    new = causal.expand(B, T, T)
    real = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=device)
    new = new & real[:, None, :]
    past = visible[:, None, :].expand(B, T, S)
    keep_past, keep_new = visible, real
    if reset is not None:
        doc = torch.cumsum(reset.long(), dim=1)  # (B, T): document index; the cache is document 0
        new = new & (doc[:, :, None] == doc[:, None, :])
        past = past & (doc == 0)[:, :, None]
        last = doc[:, -1:]
        keep_past = visible & (last == 0)
        keep_new = real & (doc == last)
    new = new | torch.eye(T, dtype=torch.bool, device=device)
    return torch.cat([past, new], dim=-1)[:, None], torch.cat([keep_past, keep_new], dim=1)


class AttentionLayer(nn.Module):
    """Llama self-attention; see the module docstring for the state. Input ``(B, T, D)``."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_kv_heads: int,
        rope_theta: float,
        bias: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.d_model, self.num_heads, self.num_kv_heads = d_model, num_heads, num_kv_heads
        self.head_dim, self.rope_theta = d_model // num_heads, rope_theta
        self.q = nn.Linear(d_model, num_heads * self.head_dim, bias=bias)
        self.k = nn.Linear(d_model, num_kv_heads * self.head_dim, bias=bias)
        self.v = nn.Linear(d_model, num_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(num_heads * self.head_dim, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self, num_blocks: int) -> None:
        """small init for q, k, v, wang init (scaled by depth) for the output projection:
        as for every other block's input and output projections (GPT-NeoX's scheme)."""
        d = self.d_model
        for lin in (self.q, self.k, self.v):
            small_init_(lin.weight, d)
        wang_init_(self.out_proj.weight, d, num_blocks)
        for lin in (self.q, self.k, self.v, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def empty_state(self, batch: int, device=None, dtype=None) -> AttentionState:
        kv = torch.zeros(batch, self.num_kv_heads, 0, self.head_dim, device=device, dtype=dtype)
        return (
            kv,
            kv.clone(),
            torch.zeros(batch, 0, dtype=torch.bool, device=device),
            torch.zeros(batch, dtype=torch.long, device=device),
        )

    def forward(
        self,
        x: torch.Tensor,
        state: AttentionState | None = None,
        mask: torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, AttentionState]:
        """x ``(B, T, D)``; mask ``(B, T)`` bool marks real tokens (False = left padding:
        never attended to, not counted in positions); reset ``(B, T)`` bool marks tokens
        that start a new document (nothing before them is attended to, positions restart)."""
        B, T, _ = x.shape
        H, Hkv, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q(x).view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k(x).view(B, T, Hkv, Dh).transpose(1, 2)  # (B, Hkv, T, Dh)
        v = self.v(x).view(B, T, Hkv, Dh).transpose(1, 2)
        if state is None:
            state = self.empty_state(B, x.device, x.dtype)
        k_past, v_past, visible, next_pos = state
        S = k_past.shape[2]

        positions = token_positions(next_pos, mask, reset, T)  # (B, T)
        cos, sin = rotary_cos_sin(positions, Dh, self.rope_theta, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if S:
            k = torch.cat([k_past.to(k.dtype), k], dim=2)  # (B, Hkv, S + T, Dh)
            v = torch.cat([v_past.to(v.dtype), v], dim=2)

        if S or mask is not None or reset is not None:
            allowed, visible = attention_mask(visible, mask, reset, T)  # (B, 1, T, S + T)
            # grouped-query heads as repeated keys/values: SDPA's enable_gqa has no fused
            # kernel for an explicit mask on GPUs (transformers does the same)
            rep = H // Hkv
            kr = k.repeat_interleave(rep, dim=1) if rep > 1 else k
            vr = v.repeat_interleave(rep, dim=1) if rep > 1 else v
            h = F.scaled_dot_product_attention(q, kr, vr, attn_mask=allowed)
        else:
            # a fresh, unpadded, single-document chunk: the plain causal mask, which
            # lets SDPA use its fused (flash) kernels on GPUs
            visible = torch.ones(B, T, dtype=torch.bool, device=x.device)
            h = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != Hkv)
        y = self.dropout(self.out_proj(h.transpose(1, 2).reshape(B, T, H * Dh)))
        # the next token's position: one past the last token's if that one is real
        last_real = mask[:, -1].long() if mask is not None else 1
        return y, (k, v, visible, positions[:, -1] + last_real)


__all__ = ["AttentionLayer", "apply_rotary", "attention_mask", "rotary_cos_sin", "rotate_half", "token_positions"]
