"""Tests of the sLSTM reference recurrence (xlstm_lm_kernels.slstm).

``slstm_recurrent`` is checked against the vanilla PyTorch sLSTM of the paper's
reference code (``xlstm``, where installed) after converting its layouts, against
token-by-token ``slstm_step``, for the two-halves invariance, with gradcheck
(initial state included), for the n >= 1 invariant of the stabilised normaliser,
for finiteness at extreme pre-activations, and for its input validation. Document
resets (``reset``): a packed row equals its documents run separately, the step form
agrees, a masked reset token carries the empty state on, and gradcheck passes through
resets and masked tokens.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from xlstm_lm_kernels.slstm import SLSTMState, slstm_empty_state, slstm_recurrent, slstm_step

DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
# (relative RMS, max-abs floor) for two evaluations of the same recurrence
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6)}
FORGET_GATES = ("sigmoid", "exp")


def make_inputs(B, T, H, Dh, dtype, with_state, seed=0, gate_scale=1.0):
    """Random Wx ``(B, T, 4, H, Dh)``, R ``(H, Dh, 4, Dh)``, b ``(H, 4, Dh)`` and an
    optional valid initial state (n >= 1, |c| <= n, finite m)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    wx = rnd(B, T, 4, H, Dh, scale=gate_scale)
    # R scaled so that R h is O(1) like Wx
    R = rnd(H, Dh, 4, Dh, scale=Dh**-0.5)
    b = rnd(H, 4, Dh)
    state = None
    if with_state:
        n = (1 + torch.rand(B, H, Dh, generator=g, dtype=torch.float64) * 3).to(dtype)
        c = (torch.rand(B, H, Dh, generator=g, dtype=torch.float64) * 2 - 1).to(dtype) * n
        h = torch.tanh(rnd(B, H, Dh))
        state = SLSTMState(h, c, n, rnd(B, H, Dh))
    return wx, R, b, state


def assert_state_close(actual, expected, rtol, atol, msg):
    for name, a, e in zip(SLSTMState._fields, actual, expected):
        assert_close(a, e, rtol, atol, f"{msg}: state {name}")


def _params(with_state_options=(False, True), dtypes=tuple(DTYPES), shape="B2-T13-H3-Dh4"):
    return [
        pytest.param(fg, dname, ws, id=f"{fg}-{shape}-{dname}-{'init' if ws else 'empty'}")
        for fg in FORGET_GATES
        for dname in dtypes
        for ws in with_state_options
    ]


@pytest.mark.parametrize("forget_gate, dname, with_state", _params())
def test_step_token_by_token_equals_recurrent(forget_gate, dname, with_state):
    dtype = DTYPES[dname]
    B, T, H, Dh = 2, 13, 3, 4
    wx, R, b, state = make_inputs(B, T, H, Dh, dtype, with_state, seed=1)
    out, last = slstm_recurrent(wx, R, b, state, forget_gate=forget_gate)
    assert out.shape == (B, T, H, Dh) and out.dtype == dtype

    s = state if state is not None else slstm_empty_state(B, H, Dh, dtype)
    hs = []
    for t in range(T):
        s = slstm_step(wx[:, t], s, R, b, forget_gate)
        hs.append(s.h)
    rtol, atol = TOL[dtype]
    assert_close(torch.stack(hs, dim=1), out, rtol, atol, "h")
    assert_state_close(s, last, rtol, atol, "step")


@pytest.mark.parametrize("forget_gate, dname, with_state", _params())
def test_two_halves_equal_one_run(forget_gate, dname, with_state):
    dtype = DTYPES[dname]
    wx, R, b, state = make_inputs(2, 13, 3, 4, dtype, with_state, seed=2)
    out, last = slstm_recurrent(wx, R, b, state, forget_gate=forget_gate)
    out1, mid = slstm_recurrent(wx[:, :6], R, b, state, forget_gate=forget_gate)
    out2, last2 = slstm_recurrent(wx[:, 6:], R, b, mid, forget_gate=forget_gate)
    rtol, atol = TOL[dtype]
    assert_close(torch.cat([out1, out2], dim=1), out, rtol, atol, "h")
    assert_state_close(last2, last, rtol, atol, "halves")


@pytest.mark.parametrize("forget_gate, dname, with_state", _params(dtypes=("fp64",), shape="B1-T3-H2-Dh2"))
def test_gradcheck(forget_gate, dname, with_state):
    """Finite differences on wx, R, b and (when given) the initial h, c, n, m."""
    wx, R, b, state = make_inputs(1, 3, 2, 2, torch.float64, with_state, seed=3)
    leaves = [t.clone().requires_grad_() for t in (wx, R, b, *(state or ()))]

    def fn(wx, R, b, *st):
        out, last = slstm_recurrent(wx, R, b, SLSTMState(*st) if st else None, forget_gate=forget_gate)
        return (out, *last)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dname", [pytest.param(d, id=f"sigmoid-B2-T13-H3-Dh4-{d}") for d in DTYPES])
def test_matches_xlstm_vanilla_reference(dname):
    """The reference's vanilla sLSTM (sigmoid forget gate, zero initial state).

    Its layouts: x ``(T, B, 4*H*Dh)`` gate-major; R ``(H, 4*Dh, Dh)`` with
    R_int[h, g*Dh + d, k] = R[h, k, g, d]; b ``(4*H*Dh)`` with b_int[g, h, d] = b[h, g, d];
    states ``(4, B, H*Dh)`` = (h, c, n, m), head-major in the last axis.
    """
    pytest.importorskip("xlstm")
    from xlstm.blocks.slstm.src.vanilla import slstm_forward
    from xlstm.blocks.slstm.src.vanilla.slstm import slstm_forward_pointwise

    dtype = DTYPES[dname]
    B, T, H, Dh = 2, 13, 3, 4
    wx, R, b, _ = make_inputs(B, T, H, Dh, dtype, with_state=False, seed=4, gate_scale=2.0)
    out, last = slstm_recurrent(wx, R, b, forget_gate="sigmoid")

    x_ref = wx.permute(1, 0, 2, 3, 4).reshape(T, B, 4 * H * Dh)
    R_ref = R.permute(0, 2, 3, 1).reshape(H, 4 * Dh, Dh)
    b_ref = b.permute(1, 0, 2).reshape(4 * H * Dh)
    states0 = torch.zeros(4, B, H * Dh, dtype=dtype)
    states_all, last_ref, _ = slstm_forward(x_ref, states0, R_ref, b_ref, slstm_forward_pointwise)

    out_ref = states_all[0, 1:].reshape(T, B, H, Dh).permute(1, 0, 2, 3)
    rtol, atol = TOL[dtype]
    assert_close(out, out_ref, rtol, atol, "h vs xlstm vanilla")
    assert_state_close(last, SLSTMState(*(s.reshape(B, H, Dh) for s in last_ref)), rtol, atol, "vs xlstm")


@pytest.mark.parametrize("forget_gate, dname", [pytest.param(fg, d, id=f"{fg}-B3-T60-H2-Dh4-{d}") for fg in FORGET_GATES for d in DTYPES])
def test_normaliser_never_below_one(forget_gate, dname):
    """n_t = f' n_{t-1} + i' with max(f', i') = exp(0) = 1 exactly, so n_t >= 1 at
    every step from the empty state; checked exactly (no tolerance). Gates of scale
    4 make both branches of the stabiliser occur."""
    dtype = DTYPES[dname]
    B, T, H, Dh = 3, 60, 2, 4
    wx, R, b, _ = make_inputs(B, T, H, Dh, dtype, with_state=False, seed=5, gate_scale=4.0)
    s = slstm_empty_state(B, H, Dh, dtype)
    for t in range(T):
        s = slstm_step(wx[:, t], s, R, b, forget_gate)
        assert s.n.min() >= 1.0, f"n = {s.n.min().item()} < 1 at step {t}"


@pytest.mark.parametrize("forget_gate, dname, with_state", _params(shape="B2-T13-H3-Dh4-pm1e4"))
def test_extreme_preactivations_finite(forget_gate, dname, with_state):
    """Wx = +-1e4 with random signs (and b, R h on top): outputs, final state and
    every gradient stay finite."""
    dtype = DTYPES[dname]
    B, T, H, Dh = 2, 13, 3, 4
    _, R, b, state = make_inputs(B, T, H, Dh, dtype, with_state, seed=6)
    g = torch.Generator().manual_seed(7)
    wx = (torch.randint(0, 2, (B, T, 4, H, Dh), generator=g) * 2 - 1).to(dtype) * 1e4
    leaves = [t.clone().requires_grad_() for t in (wx, R, b, *(state or ()))]
    out, last = slstm_recurrent(*leaves[:3], SLSTMState(*leaves[3:]) if state else None, forget_gate=forget_gate)
    assert torch.isfinite(out).all()
    for name, t in zip(SLSTMState._fields, last):
        assert torch.isfinite(t).all(), name
    loss = out.sum() + sum(t.sum() for t in last)
    grads = torch.autograd.grad(loss, leaves)
    for name, gr in zip(("wx", "R", "b", *SLSTMState._fields), grads):
        assert torch.isfinite(gr).all(), f"d{name} not finite"


def test_bf16_inputs():
    """bf16 in, bf16 out, state in fp32; within bf16 rounding of the fp32 result."""
    wx, R, b, _ = make_inputs(2, 13, 3, 4, torch.float32, with_state=False, seed=8)
    out16, last16 = slstm_recurrent(wx.bfloat16(), R.bfloat16(), b.bfloat16())
    out32, _ = slstm_recurrent(wx, R, b)
    assert out16.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in last16)
    # inputs and output rounded to bf16 (2^-9 relative each), fed back through R
    assert_close(out16, out32, 1e-2, 1e-3, "h")


def test_empty_sequence_returns_initial_state():
    wx, R, b, state = make_inputs(2, 0, 3, 4, torch.float64, with_state=True)
    out, last = slstm_recurrent(wx, R, b, state)
    assert out.shape == (2, 0, 3, 4)
    for a, e in zip(last, state):
        assert torch.equal(a, e)


BAD_SHAPES = [
    pytest.param({"wx": torch.randn(2, 5, 4, 12)}, "(B, T, 4, H, Dh)", id="wx-4d"),
    pytest.param({"wx": torch.randn(2, 5, 3, 3, 4)}, "(B, T, 4, H, Dh)", id="wx-3-gates"),
    pytest.param({"R": torch.randn(3, 4, 4, 5)}, "(3, 4, 4, 4)", id="R-wrong-Dh"),
    pytest.param({"R": torch.randn(3, 4, 16)}, "(3, 4, 4, 4)", id="R-flat-gates"),
    pytest.param({"b": torch.randn(4, 3, 4)}, "(3, 4, 4)", id="b-gate-major"),
]


@pytest.mark.parametrize("override, expected", BAD_SHAPES)
def test_invalid_shapes_raise(override, expected):
    kw = {"wx": torch.randn(2, 5, 4, 3, 4), "R": torch.randn(3, 4, 4, 4), "b": torch.randn(3, 4, 4), **override}
    with pytest.raises(ValueError) as info:
        slstm_recurrent(kw["wx"], kw["R"], kw["b"])
    assert expected in str(info.value), str(info.value)


@pytest.mark.parametrize("field", [pytest.param(f, id=f"state-{f}") for f in SLSTMState._fields])
def test_invalid_initial_state_raises(field):
    wx, R, b = torch.randn(2, 5, 4, 3, 4), torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4)
    state = slstm_empty_state(2, 3, 4)._replace(**{field: torch.zeros(2, 4, 3)})
    with pytest.raises(ValueError) as info:
        slstm_recurrent(wx, R, b, state)
    msg = str(info.value)
    assert f"initial state {field}" in msg and "(2, 3, 4)" in msg, msg


def test_unknown_forget_gate_raises():
    wx, R, b = torch.randn(2, 5, 4, 3, 4), torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4)
    with pytest.raises(ValueError, match="forget_gate"):
        slstm_recurrent(wx, R, b, forget_gate="sigmoidd")


def test_integer_input_raises():
    wx, R, b = torch.randint(0, 3, (2, 5, 4, 3, 4)), torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4)
    with pytest.raises(TypeError):
        slstm_recurrent(wx, R, b)


# ------------------------------------------------------------------------ document resets

# Document starts per row (T = 13): none, at t = 0, two adjacent, 1-token documents, last token.
RESET_LAYOUTS = ([], [0, 7], [4, 5], [1, 2, 3, 12], [12])


def make_reset(B: int, T: int) -> torch.Tensor:
    reset = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        reset[b, RESET_LAYOUTS[b % len(RESET_LAYOUTS)]] = True
    return reset


def run_documents(wx, R, b, state, reset, forget_gate):
    """Each row cut at its resets, each document run on its own: the first from the
    initial state (unless the row starts with a reset), the others from the empty state."""
    B, T = wx.shape[:2]
    outs, finals = [], []
    for r in range(B):
        starts = sorted({0, *reset[r].nonzero().flatten().tolist(), T})
        row_state = None if state is None or bool(reset[r, 0]) else SLSTMState(*(s[r : r + 1] for s in state))
        parts = []
        for s, e in zip(starts[:-1], starts[1:]):
            out, row_state = slstm_recurrent(wx[r : r + 1, s:e], R, b, row_state if s == 0 else None, forget_gate)
            parts.append(out)
        outs.append(torch.cat(parts, dim=1))
        finals.append(row_state)
    return torch.cat(outs), SLSTMState(*(torch.cat(f) for f in zip(*finals)))


@pytest.mark.parametrize("forget_gate, with_state", [pytest.param(fg, ws, id=f"{fg}-B5-T13-H2-Dh3-fp64-{'init' if ws else 'empty'}") for fg in FORGET_GATES for ws in (False, True)])
def test_reset_equals_separate_documents(forget_gate, with_state):
    """A packed row with resets gives exactly the outputs of running each document alone,
    and the final state is that of the row's last document."""
    B, T = 5, 13
    wx, R, b, state = make_inputs(B, T, 2, 3, torch.float64, with_state, seed=11)
    reset = make_reset(B, T)
    out, last = slstm_recurrent(wx, R, b, state, forget_gate=forget_gate, reset=reset)
    out_ref, last_ref = run_documents(wx, R, b, state, reset, forget_gate)
    rtol, atol = TOL[torch.float64]
    assert_close(out, out_ref, rtol, atol, "h")
    assert_state_close(last, last_ref, rtol, atol, "documents")


@pytest.mark.parametrize("forget_gate", FORGET_GATES)
def test_step_with_reset_equals_recurrent(forget_gate):
    """Token-by-token ``slstm_step(..., reset=reset[:, t])`` equals the sequence form."""
    B, T = 5, 13
    wx, R, b, state = make_inputs(B, T, 2, 3, torch.float64, with_state=True, seed=12)
    reset = make_reset(B, T)
    out, last = slstm_recurrent(wx, R, b, state, forget_gate=forget_gate, reset=reset)
    s, hs = state, []
    for t in range(T):
        s = slstm_step(wx[:, t], s, R, b, forget_gate, reset=reset[:, t])
        hs.append(s.h)
    rtol, atol = TOL[torch.float64]
    assert_close(torch.stack(hs, dim=1), out, rtol, atol, "h")
    assert_state_close(s, last, rtol, atol, "step")


def test_masked_reset_token_carries_the_empty_state():
    """reset applies before mask: a reset token that is masked out outputs h = 0 and
    passes the empty state on, so the next token starts a document from scratch."""
    B, T = 2, 6
    wx, R, b, state = make_inputs(B, T, 2, 3, torch.float64, with_state=True, seed=13)
    reset = torch.zeros(B, T, dtype=torch.bool)
    mask = torch.ones(B, T, dtype=torch.bool)
    reset[0, 2] = True
    mask[0, 2] = False
    out, last = slstm_recurrent(wx, R, b, state, mask=mask, reset=reset)
    assert torch.equal(out[0, 2], torch.zeros_like(out[0, 2]))
    out_doc, last_doc = slstm_recurrent(wx[:1, 3:], R, b)
    assert_close(out[:1, 3:], out_doc, *TOL[torch.float64], "h after the masked reset")
    assert_state_close(SLSTMState(*(s[:1] for s in last)), last_doc, *TOL[torch.float64], "final")
    # row 1 has neither: plain run
    out1, _ = slstm_recurrent(wx[1:], R, b, SLSTMState(*(s[1:] for s in state)))
    assert_close(out[1:], out1, *TOL[torch.float64], "row without flags")


@pytest.mark.parametrize("forget_gate", FORGET_GATES)
def test_gradcheck_with_reset_and_mask(forget_gate):
    """Finite differences through resets and masked tokens, initial state included."""
    wx, R, b, state = make_inputs(2, 5, 1, 2, torch.float64, with_state=True, seed=14)
    reset = torch.tensor([[False, False, True, False, False], [True, False, False, True, False]])
    mask = torch.tensor([[True, False, True, True, False], [True, True, False, True, True]])
    leaves = [t.clone().requires_grad_() for t in (wx, R, b, *state)]

    def fn(wx, R, b, *st):
        out, last = slstm_recurrent(wx, R, b, SLSTMState(*st), forget_gate=forget_gate, mask=mask, reset=reset)
        return (out, *last)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize(
    "reset, exc, fragment",
    [
        pytest.param(torch.zeros(2, 5), TypeError, "bool", id="float"),
        pytest.param(torch.zeros(2, 4, dtype=torch.bool), ValueError, "(2, 5)", id="shape"),
    ],
)
def test_invalid_reset_raises(reset, exc, fragment):
    wx, R, b = torch.randn(2, 5, 4, 3, 4), torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4)
    with pytest.raises(exc) as info:
        slstm_recurrent(wx, R, b, reset=reset)
    assert fragment in str(info.value) and "reset" in str(info.value)


def test_step_invalid_reset_raises():
    wx, R, b = torch.randn(2, 4, 3, 4), torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4)
    state = slstm_empty_state(2, 3, 4)
    with pytest.raises(TypeError, match="bool"):
        slstm_step(wx, state, R, b, reset=torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        slstm_step(wx, state, R, b, reset=torch.zeros(3, dtype=torch.bool))
