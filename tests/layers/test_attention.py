"""The attention layer's bookkeeping (``xlstm_lm.layers.attention``): rotary positions
and the attention mask from the carried cache, left padding and document resets,
written out by hand. The whole-model invariances (token by token, two halves,
left padding, packed documents) are in tests/models; parity with Llama in
tests/models/test_parity_llama.py."""

from __future__ import annotations

import torch

from xlstm_lm.layers.attention import attention_mask, token_positions

T_, F_ = True, False


def test_positions_count_real_tokens_since_the_document_start():
    next_pos = torch.tensor([3, 0, 5])
    mask = torch.tensor([[T_] * 6, [F_, F_, T_, T_, T_, T_], [T_] * 6])
    reset = torch.tensor([[F_] * 6, [F_] * 6, [F_, F_, T_, F_, F_, T_]])
    got = token_positions(next_pos, mask, reset, 6)
    assert got.tolist() == [
        [3, 4, 5, 6, 7, 8],  # continues from the cache
        [0, 0, 0, 1, 2, 3],  # padding counts nothing (its position is the next real token's)
        [5, 6, 0, 1, 2, 0],  # documents start again from 0
    ]
    assert torch.equal(token_positions(next_pos, None, None, 6), next_pos[:, None] + torch.arange(6))


def test_mask_hides_padding_earlier_documents_and_the_cache_after_a_reset():
    # cache of 2 positions, the first one padding; then 4 new tokens
    visible = torch.tensor([[F_, T_], [F_, T_]])
    mask = torch.tensor([[T_] * 4, [T_] * 4])
    reset = torch.tensor([[F_] * 4, [F_, F_, T_, F_]])
    allowed, keep = attention_mask(visible, mask, reset, 4)
    assert allowed.shape == (2, 1, 4, 6)
    # row 0: causal over the visible cache and the new tokens
    assert allowed[0, 0].int().tolist() == [
        [0, 1, 1, 0, 0, 0],
        [0, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1],
    ]
    # row 1: a document starts at new token 2; it sees neither the cache nor tokens 0-1
    assert allowed[1, 0].int().tolist() == [
        [0, 1, 1, 0, 0, 0],
        [0, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1, 1],
    ]
    # afterwards only the last document stays visible
    assert keep.int().tolist() == [[0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]]

    # left padding: padded keys are never seen; a padded query sees only itself
    pad = torch.tensor([[F_, F_, T_, T_]])
    allowed, keep = attention_mask(torch.zeros(1, 0, dtype=torch.bool), pad, None, 4)
    assert allowed[0, 0].int().tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    assert keep.int().tolist() == [[0, 0, 1, 1]]
