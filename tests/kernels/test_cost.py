"""Cost of the PyTorch forms, checked without timing (issue 13).

Backward linear in T: every Python loop over time steps or chunks must walk tensors
unbound once before it; indexing ``x[:, t]`` inside the loop gives every step a
``SelectBackward0`` that builds a zero gradient the size of all of x, a backward
quadratic in T (it was 57% of the mLSTM fwd+bwd profile). Counted exactly at T and
4T with ``tests.helpers.assert_backward_linear_in_T``.

Final state for free: the chunkwise and parallel forms compute the final state only
when it is asked for, and the chunkwise form never computes each chunk's own final
state (counted in matmul FLOPs with ``torch.utils.flop_counter``).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.helpers import assert_backward_linear_in_T
from xlstm_lm_kernels.mlstm import mlstm_chunkwise_torch, mlstm_parallel, mlstm_recurrent
from xlstm_lm_kernels.slstm import slstm_recurrent


def _mlstm_inputs(B, H, T, Dqk, Dv, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, T, Dqk, generator=g) for _ in range(2))
    v = torch.randn(B, H, T, Dv, generator=g)
    i, f = torch.randn(B, H, T, generator=g), 2 + torch.randn(B, H, T, generator=g)
    reset = torch.rand(B, T, generator=g) < 0.2
    return [t.requires_grad_() for t in (q, k, v, i, f)], reset


def _mlstm_loss(form):
    def loss(T):
        x, reset = _mlstm_inputs(1, 2, T, 4, 4)
        state = tuple(torch.randn(*s).requires_grad_() for s in ((1, 2, 4, 4), (1, 2, 4), (1, 2)))
        kw = {"chunk_size": 2} if form is mlstm_chunkwise_torch else {}
        h, last = form(*x, state, return_last_state=True, reset=reset, **kw)
        return h.sum() + sum(s.sum() for s in last)

    return loss


def _slstm_loss(T):
    g = torch.Generator().manual_seed(0)
    wx = torch.randn(1, T, 4, 2, 4, generator=g).requires_grad_()
    R = (0.5 * torch.randn(2, 4, 4, 4, generator=g)).requires_grad_()
    b = torch.randn(2, 4, 4, generator=g).requires_grad_()
    mask, reset = torch.rand(1, T, generator=g) < 0.9, torch.rand(1, T, generator=g) < 0.2
    h, last = slstm_recurrent(wx, R, b, mask=mask, reset=reset)
    return h.sum() + last.c.sum()


@pytest.mark.parametrize(
    "make_loss",
    [
        pytest.param(_mlstm_loss(mlstm_recurrent), id="mlstm-recurrent-reset-init"),
        pytest.param(_mlstm_loss(mlstm_chunkwise_torch), id="mlstm-chunkwise-L2-reset-init"),
        pytest.param(_slstm_loss, id="slstm-recurrent-mask-reset"),
    ],
)
def test_backward_is_linear_in_sequence_length(make_loss):
    assert_backward_linear_in_T(make_loss)


def _matmul_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("T", [pytest.param(64, id="T64-L16"), pytest.param(50, id="T50-L16-padded")])
def test_chunkwise_computes_no_state_it_throws_away(T):
    """Matmul FLOPs of the chunkwise forward, exactly: NC - 1 memory updates between
    chunks plus each chunk's outputs; the final state adds one update, and no chunk's
    own final state is ever computed."""
    B, H, Dqk, Dv, L = 1, 2, 8, 16, 16
    NC = -(-T // L)
    x, _ = _mlstm_inputs(B, H, T, Dqk, Dv)
    x = [t.detach() for t in x]
    update = 2 * L * Dqk * Dv
    outputs = 2 * L * L * Dqk + 2 * L * L * Dv + 2 * L * Dqk * Dv + 2 * L * Dqk
    expected = B * H * ((NC - 1) * update + NC * outputs)
    assert _matmul_flops(lambda: mlstm_chunkwise_torch(*x, chunk_size=L)) == expected
    with_state = _matmul_flops(lambda: mlstm_chunkwise_torch(*x, return_last_state=True, chunk_size=L))
    assert with_state == expected + B * H * update


def test_parallel_final_state_only_when_asked():
    B, H, T, Dqk, Dv = 1, 2, 24, 8, 16
    x, _ = _mlstm_inputs(B, H, T, Dqk, Dv)
    x = [t.detach() for t in x]
    without = _matmul_flops(lambda: mlstm_parallel(*x))
    with_state = _matmul_flops(lambda: mlstm_parallel(*x, return_last_state=True))
    assert with_state - without == B * H * 2 * T * Dqk * Dv
