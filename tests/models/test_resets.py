"""Document resets through the whole model: a packed row of documents equals each
document run alone, for every block kind (cell state and causal-conv taps; for
attention the block-diagonal mask and rotary positions restarting at 0)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from tests.models.test_lm import PATTERNS, tiny_model

# fp64 models: the only difference between packed and alone runs is summation order
# inside the chunkwise/parallel kernels, ~1e-15 relative.
RTOL, ATOL = 1e-10, 1e-12


def packed(lengths: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, 37, (1, n), generator=g) for n in lengths]
    ids = torch.cat(docs, dim=1)
    reset = torch.zeros_like(ids, dtype=torch.bool)
    start = 0
    for d in docs:
        reset[0, start] = True
        start += d.shape[1]
    return docs, ids, reset


@pytest.mark.parametrize("pattern", PATTERNS, ids=[f"pattern-{p}" for p in PATTERNS])
def test_packed_row_equals_documents_alone(pattern):
    # 23 tokens > chunk_size 8: the mLSTM runs chunkwise, with resets inside chunks,
    # on a chunk border (token 8) and documents shorter than the conv kernel (2, 1).
    model = tiny_model(pattern)
    docs, ids, reset = packed([5, 3, 2, 1, 12])
    out = model(ids, reset=reset).logits
    start = 0
    for n, doc in enumerate(docs):
        alone = model(doc).logits
        L = doc.shape[1]
        assert_close(out[:, start : start + L], alone, rtol=RTOL, atol_floor=ATOL, msg=f"{pattern} doc {n}")
        start += L


@pytest.mark.parametrize("pattern", ["m", "s", "x", "a", "l", "msxm", "mmam"])
def test_reset_ignores_carried_state_and_pieces_equal_one_run(pattern):
    """A reset at token 0 discards the incoming state; a packed row split in two
    pieces (carrying state and conv buffer) equals the one-piece run."""
    model = tiny_model(pattern)
    _, ids, reset = packed([4, 9, 6], seed=1)
    full = model(ids, reset=reset)
    warm = model(torch.randint(0, 37, (1, 7))).state
    assert_close(model(ids, warm, reset=reset).logits, full.logits, rtol=RTOL, atol_floor=ATOL)
    for cut in (2, 6, 13):
        a = model(ids[:, :cut], reset=reset[:, :cut])
        b = model(ids[:, cut:], a.state, reset=reset[:, cut:])
        assert_close(torch.cat([a.logits, b.logits], 1), full.logits, rtol=RTOL, atol_floor=ATOL, msg=f"cut {cut}")


def test_no_reset_flags_equal_no_reset_argument():
    model = tiny_model("msxa")
    ids = torch.randint(0, 37, (2, 11))
    plain = model(ids).logits
    flagged = model(ids, reset=torch.zeros_like(ids, dtype=torch.bool)).logits
    assert torch.equal(plain, flagged)


def test_reset_shape_error_is_clear():
    model = tiny_model("m")
    with pytest.raises(ValueError, match="reset"):
        model(torch.zeros(1, 4, dtype=torch.long), reset=torch.zeros(1, 3, dtype=torch.bool))
