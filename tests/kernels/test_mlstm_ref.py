"""Tests of the pure-PyTorch mLSTM forms (xlstm_lm_kernels.mlstm).

The recurrent step loop (``naive.mlstm_recurrent``) is the definition. The parallel
and chunkwise forms must match it in outputs, final state (C, n, m) and every
gradient, initial state included, at shapes where T is not a multiple of the chunk
size, Dqk != Dv, B > 1 and H > 1. Also checked: two halves with carried state = one
full run (mixing forms too), token-by-token ``mlstm_step``, bf16 inputs, extreme
gate pre-activations, a 16k-step run, input validation, and parity with the
parallel form of the paper's reference code (``xlstm``) where it is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tests.helpers import assert_close
from xlstm_lm_kernels.mlstm import (
    MLSTMState,
    mlstm,
    mlstm_chunkwise_torch,
    mlstm_parallel,
    mlstm_recurrent,
    mlstm_step,
)

DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
# (relative RMS, max-abs floor) between two forms of the same math: only the
# summation order differs, so this is rounding noise of the dtype.
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6)}
# Gradients in fp32 against the fp64 reference: the backward of the stabilised
# exp / divide chain loses a little more than the forward (measured ~1e-6).
GRAD_TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (3e-5, 1e-6)}


def run_form(form: str, q, k, v, i, f, state=None, chunk_size: int = 8, eps: float = 1e-6):
    """Run one form and return ``(h, MLSTMState)``."""
    if form == "recurrent":
        return mlstm_recurrent(q, k, v, i, f, state, return_last_state=True, eps=eps)
    if form == "parallel":
        return mlstm_parallel(q, k, v, i, f, state, return_last_state=True, eps=eps)
    if form == "chunkwise":
        return mlstm_chunkwise_torch(q, k, v, i, f, state, return_last_state=True, chunk_size=chunk_size, eps=eps)
    raise AssertionError(form)


FORMS = ("recurrent", "parallel", "chunkwise")


@dataclass(frozen=True)
class Case:
    B: int
    H: int
    T: int
    Dqk: int
    Dv: int
    chunk: int

    @property
    def id(self) -> str:
        return f"B{self.B}-T{self.T}-H{self.H}-Dqk{self.Dqk}-Dv{self.Dv}-C{self.chunk}"


CASES = [
    # T not a multiple of the chunk, Dqk != Dv
    Case(B=2, H=3, T=37, Dqk=8, Dv=6, chunk=8),
    # a single token
    Case(B=1, H=1, T=1, Dqk=4, Dv=4, chunk=8),
    # T a multiple of the chunk (several full chunks)
    Case(B=2, H=2, T=64, Dqk=8, Dv=8, chunk=16),
    # chunk larger than T
    Case(B=1, H=2, T=5, Dqk=4, Dv=3, chunk=64),
    # T = 100: neither a power of two nor a multiple of 32
    Case(B=2, H=3, T=100, Dqk=8, Dv=8, chunk=32),
]


def make_inputs(case: Case, dtype: torch.dtype, with_state: bool, seed: int = 0):
    """Random (q, k, v, i, f) and an optional random initial state, in ``dtype``.

    Gates: i ~ N(0, 1), f ~ N(1, 2) so that the forget gate spans nearly closed to
    nearly open and the stabiliser switches between its two branches.
    """
    g = torch.Generator().manual_seed(seed)
    B, H, T, Dqk, Dv = case.B, case.H, case.T, case.Dqk, case.Dv

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)

    x = (rnd(B, H, T, Dqk), rnd(B, H, T, Dqk), rnd(B, H, T, Dv), rnd(B, H, T), rnd(B, H, T, scale=2.0, shift=1.0))
    state = MLSTMState(rnd(B, H, Dqk, Dv), rnd(B, H, Dqk), rnd(B, H)) if with_state else None
    return x, state


def to64(x):
    """fp64 copy of a tuple of tensors or of an MLSTMState (None stays None)."""
    if x is None:
        return None
    doubled = [t.double() for t in x]
    return MLSTMState(*doubled) if isinstance(x, MLSTMState) else tuple(doubled)


def assert_state_close(actual: MLSTMState, expected: MLSTMState, rtol: float, atol: float, msg: str) -> None:
    for name, a, e in zip(MLSTMState._fields, actual, expected):
        assert_close(a, e, rtol, atol, f"{msg}: final state {name}")


def _parity_params():
    params = []
    for case in CASES:
        for dname in DTYPES:
            for with_state in (False, True):
                for form in FORMS:
                    # fp64 recurrent is the reference itself
                    if form == "recurrent" and dname == "fp64":
                        continue
                    sid = "init" if with_state else "zero"
                    params.append(pytest.param(form, case, dname, with_state, id=f"{form}-{case.id}-{dname}-{sid}"))
    return params


@pytest.mark.parametrize("form, case, dname, with_state", _parity_params())
def test_forms_match_recurrent(form, case, dname, with_state):
    """Every form equals the fp64 recurrent definition: outputs and final (C, n, m)."""
    dtype = DTYPES[dname]
    x, state = make_inputs(case, dtype, with_state)
    h, last = run_form(form, *x, state=state, chunk_size=case.chunk)
    h_ref, last_ref = run_form("recurrent", *to64(x), state=to64(state))

    assert h.dtype == dtype and h.shape == (case.B, case.H, case.T, case.Dv)
    assert all(t.dtype == dtype for t in last)
    rtol, atol = TOL[dtype]
    assert_close(h, h_ref, rtol, atol, f"{form} h")
    assert_state_close(last, last_ref, rtol, atol, form)


@pytest.mark.parametrize("form", [pytest.param(f, id=f) for f in FORMS])
def test_empty_sequence_returns_initial_state(form):
    case = Case(B=2, H=1, T=0, Dqk=4, Dv=3, chunk=8)
    x, state = make_inputs(case, torch.float64, with_state=True)
    h, last = run_form(form, *x, state=state, chunk_size=case.chunk)
    assert h.shape == (2, 1, 0, 3)
    for a, e in zip(last, state):
        assert torch.equal(a, e)


def _half_params():
    pairs = [
        ("recurrent", "recurrent"),
        ("parallel", "parallel"),
        ("chunkwise", "chunkwise"),
        ("chunkwise", "recurrent"),
        ("recurrent", "parallel"),
        ("parallel", "chunkwise"),
    ]
    return [
        pytest.param(a, b, dname, with_state, id=f"{a}-then-{b}-B2-T37-H3-Dqk8-Dv6-C8-{dname}-{'init' if with_state else 'zero'}")
        for a, b in pairs
        for dname in DTYPES
        for with_state in (False, True)
    ]


@pytest.mark.parametrize("first, second, dname, with_state", _half_params())
def test_two_halves_equal_one_run(first, second, dname, with_state):
    """Run tokens [0, 20) with one form, carry the state into [20, 37) with another;
    the split point is not a multiple of the chunk size."""
    case = CASES[0]
    dtype = DTYPES[dname]
    x, state = make_inputs(case, dtype, with_state, seed=1)
    split = 20
    h_full, last_full = run_form(first, *x, state=state, chunk_size=case.chunk)
    h1, mid = run_form(first, *(t[:, :, :split] for t in x), state=state, chunk_size=case.chunk)
    h2, last = run_form(second, *(t[:, :, split:] for t in x), state=mid, chunk_size=case.chunk)

    rtol, atol = TOL[dtype]
    assert_close(torch.cat([h1, h2], dim=2), h_full, rtol, atol, "h")
    assert_state_close(last, last_full, rtol, atol, f"{first}+{second}")


@pytest.mark.parametrize("dname", [pytest.param(d, id=f"B2-T37-H3-Dqk8-Dv6-{d}") for d in DTYPES])
def test_step_token_by_token_equals_recurrent(dname):
    case = CASES[0]
    dtype = DTYPES[dname]
    (q, k, v, i, f), state = make_inputs(case, dtype, with_state=True, seed=2)
    h_ref, last_ref = mlstm_recurrent(q, k, v, i, f, state, return_last_state=True)

    hs = []
    s = state
    for t in range(case.T):
        h, s = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], s)
        assert h.shape == (case.B, case.H, case.Dv)
        hs.append(h)
    rtol, atol = TOL[dtype]
    assert_close(torch.stack(hs, dim=2), h_ref, rtol, atol, "h")
    assert_state_close(s, last_ref, rtol, atol, "step")


@pytest.mark.parametrize("backend", [pytest.param(f, id=f) for f in FORMS])
def test_dispatch_passes_every_argument(backend):
    """``mlstm(backend=...)`` forwards state, chunk_size and eps to the chosen form.
    A large eps makes a dropped eps visible."""
    case = CASES[0]
    x, state = make_inputs(case, torch.float64, with_state=True, seed=3)
    h, last = mlstm(*x, initial_state=state, return_last_state=True, backend=backend, chunk_size=5, eps=0.5)
    h_ref, last_ref = run_form(backend, *x, state=state, chunk_size=5, eps=0.5)
    assert_close(h, h_ref, 1e-14, 0.0, "h")
    assert_state_close(last, last_ref, 1e-14, 0.0, backend)
    h_default = mlstm(*x, initial_state=state, backend=backend, chunk_size=5)
    assert not torch.allclose(h, h_default), "eps was not forwarded"
    assert mlstm(*x, backend=backend).shape == h.shape


# --------------------------------------------------------------------------- gradients


def _loss_weights(h_shape, case: Case, seed: int = 7):
    """Random fixed weights so that every element of h and of the final state counts."""
    g = torch.Generator().manual_seed(seed)
    B, H, Dqk, Dv = case.B, case.H, case.Dqk, case.Dv
    shapes = (h_shape, (B, H, Dqk, Dv), (B, H, Dqk), (B, H))
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


def _grads(form, case, x, state):
    """Gradients of a weighted sum of h and the final (C, n, m) w.r.t. every input."""
    leaves = [t.detach().clone().requires_grad_() for t in x]
    st = None
    if state is not None:
        st = MLSTMState(*(t.detach().clone().requires_grad_() for t in state))
        leaves += list(st)
    h, last = run_form(form, *leaves[:5], state=st, chunk_size=case.chunk)
    weights = _loss_weights(h.shape, case)
    loss = sum((out * w.to(out.dtype)).sum() for out, w in zip((h, *last), weights))
    return torch.autograd.grad(loss, leaves)


GRAD_CASES = [CASES[0], CASES[1], CASES[3]]
GRAD_NAMES = ("q", "k", "v", "i", "f", "C0", "n0", "m0")


def _grad_params():
    params = []
    for case in GRAD_CASES:
        for dname in DTYPES:
            for with_state in (False, True):
                for form in FORMS:
                    if form == "recurrent" and dname == "fp64":
                        continue
                    sid = "init" if with_state else "zero"
                    params.append(pytest.param(form, case, dname, with_state, id=f"{form}-{case.id}-{dname}-{sid}"))
    return params


@pytest.mark.parametrize("form, case, dname, with_state", _grad_params())
def test_gradients_match_recurrent_fp64(form, case, dname, with_state):
    dtype = DTYPES[dname]
    x, state = make_inputs(case, dtype, with_state, seed=4)
    grads = _grads(form, case, x, state)
    grads_ref = _grads("recurrent", case, to64(x), to64(state))
    rtol, atol = GRAD_TOL[dtype]
    for name, g, g_ref in zip(GRAD_NAMES, grads, grads_ref):
        assert g.dtype == dtype
        assert_close(g, g_ref, rtol, atol, f"{form} d{name}")


@pytest.mark.parametrize("with_reset", [pytest.param(False, id="no-reset"), pytest.param(True, id="reset")])
@pytest.mark.parametrize("group", [pytest.param(1, id="groups-of-1"), pytest.param(3, id="groups-of-3")])
def test_chunkwise_chunk_groups_equal_one_pass(monkeypatch, group, with_reset):
    """On CPU the chunkwise form runs its chunks in cache-sized groups
    (``CPU_GROUP_ELEMENTS``); groups of one chunk, or of three with a shorter last group,
    give the one-pass outputs, final state and every gradient. B2-T37-H3-Dqk8-Dv6-C8
    (5 chunks, the last one padded), fp64, with an initial state."""
    from xlstm_lm_kernels.mlstm import chunkwise_torch

    case = CASES[0]
    x, state = make_inputs(case, torch.float64, with_state=True, seed=11)
    reset = torch.rand(case.B, case.T, generator=torch.Generator().manual_seed(3)) < 0.1 if with_reset else None

    def run():
        leaves = [t.clone().requires_grad_() for t in (*x, *state)]
        h, last = mlstm_chunkwise_torch(
            *leaves[:5], MLSTMState(*leaves[5:]), return_last_state=True, chunk_size=case.chunk, reset=reset
        )
        loss = sum((out * w).sum() for out, w in zip((h, *last), _loss_weights(h.shape, case)))
        return [h, *last, *torch.autograd.grad(loss, leaves)]

    monkeypatch.setattr(chunkwise_torch, "CPU_GROUP_ELEMENTS", 2**62)
    one_pass = run()
    monkeypatch.setattr(chunkwise_torch, "CPU_GROUP_ELEMENTS", group * case.B * case.H * case.chunk**2)
    grouped = run()
    names = ("h", *MLSTMState._fields, *(f"d{n}" for n in GRAD_NAMES))
    for name, a, e in zip(names, grouped, one_pass, strict=True):
        assert_close(a, e, *TOL[torch.float64], f"groups of {group}: {name}")


@pytest.mark.parametrize("form", [pytest.param(f, id=f"{f}-B1-T5-H1-Dqk3-Dv2-C2-fp64") for f in FORMS])
def test_gradcheck_with_initial_state(form):
    """Finite differences on every input, initial (C, n, m) included; T = 5 with
    chunk 2 leaves a padded last chunk."""
    case = Case(B=1, H=1, T=5, Dqk=3, Dv=2, chunk=2)
    x, state = make_inputs(case, torch.float64, with_state=True, seed=5)
    leaves = [t.clone().requires_grad_() for t in (*x, *state)]

    def fn(q, k, v, i, f, C, n, m):
        h, last = run_form(form, q, k, v, i, f, state=MLSTMState(C, n, m), chunk_size=case.chunk)
        return (h, *last)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------- bf16


@pytest.mark.parametrize("form", [pytest.param(f, id=f"{f}-B2-T37-H3-Dqk8-Dv6-C8-bf16") for f in FORMS])
def test_bf16_inputs(form):
    """bf16 in, bf16 out, computed in fp32: within bf16 rounding of the fp32 result."""
    case = CASES[0]
    x32, _ = make_inputs(case, torch.float32, with_state=False, seed=6)
    x16 = [t.to(torch.bfloat16).requires_grad_() for t in x32]
    h16, last16 = run_form(form, *x16, chunk_size=case.chunk)
    h32, last32 = run_form(form, *x32, chunk_size=case.chunk)

    assert h16.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in last16)
    assert torch.isfinite(h16).all()
    # Inputs and the output are rounded to bf16 (8 mantissa bits, 2^-9 ~ 2e-3 relative
    # per rounding), and the gates enter through exp, so ~1e-2 relative is the scale.
    assert_close(h16, h32, 1e-2, 1e-3, "h")
    assert_state_close(last16, last32, 1e-2, 1e-3, form)

    h16.float().square().sum().backward()
    for name, t in zip(GRAD_NAMES, x16):
        assert t.grad.dtype == torch.bfloat16, name
        assert torch.isfinite(t.grad).all(), name


# --------------------------------------------------------------------------- extreme gates


def _extreme_inputs(dtype, i_mode: str, f_mode: str, with_state: bool, seed: int = 8):
    """Gate pre-activations of +-1e4: "sign" = random signs, "pos" = all +1e4."""
    case = Case(B=2, H=2, T=19, Dqk=4, Dv=3, chunk=4)
    (q, k, v, _, _), state = make_inputs(case, dtype, with_state, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)

    def gate(mode):
        if mode == "pos":
            return torch.full((case.B, case.H, case.T), 1e4, dtype=dtype)
        signs = torch.randint(0, 2, (case.B, case.H, case.T), generator=g).to(dtype) * 2 - 1
        return signs * 1e4

    i, f = gate(i_mode), gate(f_mode)
    if i_mode == f_mode == "sign":
        # make sure the hardest pattern is present: both gates -1e4 at the first token
        i[0, 0, 0] = f[0, 0, 0] = -1e4
    return case, (q, k, v, i, f), state


def _extreme_params():
    return [
        pytest.param(form, dname, with_state, id=f"{form}-B2-T19-H2-Dqk4-Dv3-C4-{dname}-{'init' if with_state else 'zero'}")
        for form in FORMS
        for dname in DTYPES
        for with_state in (False, True)
    ]


@pytest.mark.parametrize("form, dname, with_state", _extreme_params())
def test_extreme_gates_forward_finite(form, dname, with_state):
    dtype = DTYPES[dname]
    case, x, state = _extreme_inputs(dtype, "sign", "sign", with_state)
    h, last = run_form(form, *x, state=state, chunk_size=case.chunk)
    assert torch.isfinite(h).all()
    for name, t in zip(MLSTMState._fields, last):
        assert torch.isfinite(t).all(), name
    if dtype == torch.float64 and form != "recurrent":
        # the forms also agree here, to the usual fp64 tolerance
        h_ref, last_ref = run_form("recurrent", *x, state=state)
        rtol, atol = TOL[dtype]
        assert_close(h, h_ref, rtol, atol, "h")
        assert_state_close(last, last_ref, rtol, atol, form)


def _extreme_grad_params():
    regimes = [("sign", "pos"), ("pos", "sign")]
    return [
        pytest.param(form, dname, i_mode, f_mode, id=f"{form}-i{i_mode}-f{f_mode}-B2-T19-H2-Dqk4-Dv3-C4-{dname}")
        for form in FORMS
        for dname in DTYPES
        for i_mode, f_mode in regimes
    ]


@pytest.mark.parametrize("form, dname, i_mode, f_mode", _extreme_grad_params())
def test_extreme_gates_gradients_finite(form, dname, i_mode, f_mode):
    """Gradients stay finite at +-1e4 gates while the stabiliser m stays >= 0:
    forget gate fully open (m_t >= m_0 = 0) or input gate +1e4 (m_t >= 1e4)."""
    dtype = DTYPES[dname]
    case, x, state = _extreme_inputs(dtype, i_mode, f_mode, with_state=True)
    grads = _grads(form, case, x, state)
    for name, g in zip(GRAD_NAMES, grads):
        assert torch.isfinite(g).all(), f"d{name} not finite"


@pytest.mark.parametrize("form", [pytest.param(f, id=f"{f}-isign-fsign-B2-T19-H2-Dqk4-Dv3-C4-fp32") for f in FORMS])
def test_extreme_gates_gradients_finite_both_signs(form):
    case, x, state = _extreme_inputs(torch.float32, "sign", "sign", with_state=False)
    grads = _grads(form, case, x, state)
    for name, g in zip(GRAD_NAMES, grads):
        assert torch.isfinite(g).all(), f"d{name} not finite"


def test_long_sequence_16k_steps_stays_finite_and_matches_recurrent():
    """16,384 steps with input gates of 80..100 (exp overflows fp32 without the
    stabiliser) and a mostly open forget gate, so n accumulates thousands of terms.
    q, k >= 0 keep n.q away from 0, so h is well conditioned and comparable."""
    T = 16_384
    g = torch.Generator().manual_seed(9)
    q, k = (torch.randn(1, 1, T, 4, generator=g).abs() for _ in range(2))
    v = torch.randn(1, 1, T, 4, generator=g)
    i = 80 + 20 * torch.rand(1, 1, T, generator=g)
    f = 5 + torch.randn(1, 1, T, generator=g)
    with torch.no_grad():
        h, last = mlstm_chunkwise_torch(q, k, v, i, f, return_last_state=True, chunk_size=256)
        assert torch.isfinite(h).all()
        for name, t in zip(MLSTMState._fields, last):
            assert torch.isfinite(t).all(), name
        h_ref, last_ref = mlstm_recurrent(q, k, v, i, f, return_last_state=True)
    # both fp32: rounding of two summation orders accumulated over 16k steps
    assert_close(h, h_ref, 1e-4, 1e-5, "h")
    assert_state_close(last, last_ref, 1e-4, 1e-5, "16k")


# --------------------------------------------------------------------------- validation


def _valid(B=2, H=3, T=7, Dqk=4, Dv=5):
    return {
        "q": torch.randn(B, H, T, Dqk),
        "k": torch.randn(B, H, T, Dqk),
        "v": torch.randn(B, H, T, Dv),
        "i": torch.randn(B, H, T),
        "f": torch.randn(B, H, T),
    }


BAD_INPUTS = [
    pytest.param({"q": torch.randn(2, 3, 7)}, ValueError, "(B, H, T, D)", id="q-3d"),
    pytest.param({"v": torch.randn(2, 3, 7, 5, 1)}, ValueError, "(B, H, T, D)", id="v-5d"),
    pytest.param({"k": torch.randn(2, 3, 7, 6)}, ValueError, "same shape", id="k-Dqk-mismatch"),
    pytest.param({"v": torch.randn(2, 3, 8, 5)}, ValueError, "(B, H, T)", id="v-T-mismatch"),
    pytest.param({"i": torch.randn(2, 3, 7, 1)}, ValueError, "(2, 3, 7)", id="i-extra-dim"),
    pytest.param({"f": torch.randn(2, 7)}, ValueError, "(2, 3, 7)", id="f-wrong-shape"),
    pytest.param({"q": torch.randint(0, 3, (2, 3, 7, 4))}, TypeError, "floating-point", id="q-int64"),
    pytest.param({"i": torch.zeros(2, 3, 7, dtype=torch.bool)}, TypeError, "floating-point", id="i-bool"),
]


@pytest.mark.parametrize("backend", [pytest.param(f, id=f) for f in FORMS])
@pytest.mark.parametrize("override, exc, fragment", BAD_INPUTS)
def test_invalid_inputs_raise(backend, override, exc, fragment):
    kw = {**_valid(), **override}
    with pytest.raises(exc) as info:
        mlstm(kw["q"], kw["k"], kw["v"], kw["i"], kw["f"], backend=backend)
    assert fragment in str(info.value)


BAD_STATES = [
    pytest.param("C", (2, 3, 5, 4), "(2, 3, 4, 5)", id="C-transposed"),
    pytest.param("n", (2, 3, 5), "(2, 3, 4)", id="n-Dv-instead-of-Dqk"),
    pytest.param("m", (2, 3, 1), "(2, 3)", id="m-trailing-1"),
]


@pytest.mark.parametrize("backend", [pytest.param(f, id=f) for f in FORMS])
@pytest.mark.parametrize("which, shape, expected", BAD_STATES)
def test_invalid_initial_state_raises(backend, which, shape, expected):
    kw = _valid()
    state = {"C": torch.zeros(2, 3, 4, 5), "n": torch.zeros(2, 3, 4), "m": torch.zeros(2, 3)}
    state[which] = torch.zeros(*shape)
    with pytest.raises(ValueError) as info:
        mlstm(*kw.values(), initial_state=(state["C"], state["n"], state["m"]), backend=backend)
    msg = str(info.value)
    assert f"initial state {which}" in msg and expected in msg, msg


@pytest.mark.parametrize("chunk_size", [pytest.param(0, id="chunk0"), pytest.param(-4, id="chunk-neg")])
def test_nonpositive_chunk_size_raises(chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        mlstm_chunkwise_torch(*_valid().values(), chunk_size=chunk_size)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="unknown mLSTM backend"):
        mlstm(*_valid().values(), backend="triton-typo")


# --------------------------------------------------------------------------- reference code


def test_parallel_matches_xlstm_reference():
    """The paper's reference ``parallel_stabilized_simple`` (empty memory). The two
    differ only in where eps enters at the first steps: ours stabilises with
    m_t = max(max_j log D_tj, F_t + m_0) (the recurrent stabiliser, m_0 = 0), the
    reference with max_j log D_tj alone, which changes the eps * exp(m_t) term."""
    pytest.importorskip("xlstm")
    from xlstm.blocks.mlstm.backends import parallel_stabilized_simple

    case = Case(B=2, H=3, T=37, Dqk=8, Dv=8, chunk=8)
    (q, k, v, i, f), _ = make_inputs(case, torch.float64, with_state=False, seed=10)
    f = torch.randn(f.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    h_ref = parallel_stabilized_simple(q, k, v, i[..., None], f[..., None])
    h = mlstm_parallel(q, k, v, i, f)
    assert_close(h, h_ref, 1e-6, 1e-8, "h vs xlstm parallel_stabilized_simple")
