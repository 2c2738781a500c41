"""Tests of the Triton sLSTM kernels (fused sequence forward + backward, decode step).

Ground truth is the fp64 reference recurrence (``slstm_recurrent``) run on the very
inputs the kernel sees (bf16/fp16 inputs are compared on their rounded values). Every
case checks the outputs, the final (h, c, n, m) and every gradient (Wx, R, b and the
initial h, c, n, m, with gradients also flowing in through the final state) at
T = 1, 7, 63, 100 (256, 1000 on GPU), head dims 4 and 8 (padded to 16), 16, 24, 32,
and 128, 192, 512 for 2-3 steps (64..512 at T >= 63 on GPU), B = 2, 3, 17 (two batch
tiles), H = 1, 2, 3, fp32 / bf16 / fp16 (and bf16 Wx with fp32 R, b), with
and without initial state, with update masks and document resets, both forget gates,
and both kernel variants (R resident in registers; R streamed per step, forced at
small Dh by shrinking its tiles). Output buffers are poisoned with NaN, so an element
a kernel does not write fails ``assert_close``.

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` (tests/conftest.py), and
a separate test compiles every kernel for sm_80 / sm_90 with Triton's bundled ptxas,
which catches code the interpreter accepts but the GPU compiler does not. Not checked
without a GPU: the CTA barriers of the streamed variant (the interpreter runs each
program as one sequential thread, so a missing barrier still passes) and speed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch

triton = pytest.importorskip("triton")

from tests.helpers import assert_close  # noqa: E402
from tests.kernels import compile_offline, has_ptxas  # noqa: E402
from xlstm_lm_kernels import launch  # noqa: E402
from xlstm_lm_kernels.slstm import SLSTMState, slstm_empty_state, slstm_recurrent, slstm_step  # noqa: E402
from xlstm_lm_kernels.slstm import triton_fused as tf  # noqa: E402
from xlstm_lm_kernels.slstm.step_triton import slstm_step_triton  # noqa: E402
from xlstm_lm_kernels.slstm.triton_fused import slstm_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GPU_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="too slow under the Triton interpreter; runs on GPU")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GRAD_NAMES = ("wx", "R", "b", "h0", "c0", "n0", "m0")

# (relative RMS, max-abs floor) against the fp64 recurrence on the same inputs.
# fp32: fp32 rounding in the recurrence and the host GEMMs (measured <= 3e-7, 3 seeds).
# fp16: h and dWx are rounded to fp16 (2^-11) on store, and the gradient arriving at h
#   is fp16 (measured <= 3e-4).
# bf16: the recurrence runs in fp32, but h and dWx are rounded to bf16 (2^-8) on store
#   and the gradient arriving at h is bf16 (measured <= 3.4e-3 over 3 seeds): 1e-2.
TOL = {
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-4),
    torch.bfloat16: (1e-2, 1e-3),
}


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every buffer the launchers allocate with torch.empty starts as NaN."""
    monkeypatch.setattr(launch, "POISON_OUTPUTS", True)


@dataclass(frozen=True)
class Case:
    B: int
    T: int
    H: int
    Dh: int
    dtype: str = "fp32"
    init: bool = True
    forget: str = "sigmoid"
    mask: bool = False
    reset: bool = False
    final: bool = True  # the loss also uses the final state
    weights: str = "same"  # dtype of R and b: "same" as wx, or "fp32"
    variant: str = "auto"  # "auto" (by Dh) or "streamedNxK": forced, with (BN, BK) = (N, K)

    @property
    def id(self) -> str:
        parts = [f"B{self.B}-T{self.T}-H{self.H}-Dh{self.Dh}-{self.dtype}", "init" if self.init else "empty", self.forget]
        for flag in ("mask", "reset"):
            if getattr(self, flag):
                parts.append(flag)
        if not self.final:
            parts.append("h-only")
        if self.weights != "same":
            parts.append(f"R-{self.weights}")
        if self.variant != "auto":
            parts.append(self.variant)
        return "-".join(parts)


def assert_state_close(actual, expected, rtol, atol, msg):
    """``assert_close`` per state entry; m = -inf (an empty state carried through masked
    tokens after a reset) must occur at the same positions and is compared exactly."""
    for name, a, e in zip(SLSTMState._fields, actual, expected):
        if name == "m":
            a_inf, e_inf = torch.isinf(a.detach().cpu()), torch.isinf(e.detach().cpu())
            assert torch.equal(a_inf, e_inf), f"{msg} m: infinite at different positions"
            a, e = a.detach().cpu().masked_fill(a_inf, 0.0), e.detach().cpu().masked_fill(e_inf, 0.0)
        assert_close(a, e, rtol, atol, f"{msg} {name}")


def make_flags(case: Case):
    """mask: row 0 left-padded (3 tokens) and one dropped token, the other rows ~20% dropped;
    reset: row 0 at t = 5, 6 (a 1-token document, also masked out) and T - 1, row 1 at
    t = 0 and T // 2, the other rows ~10%."""
    g = torch.Generator().manual_seed(123)
    B, T = case.B, case.T
    mask = reset = None
    if case.mask:
        mask = torch.rand(B, T, generator=g) > 0.2
        mask[0] = True
        mask[0, :3] = False
        mask[0, 6 % T] = False
    if case.reset:
        reset = torch.rand(B, T, generator=g) > 0.9
        reset[0] = False
        for t in (5, 6, T - 1):
            if 0 < t < T:
                reset[0, t] = True
        if B > 1:
            reset[1] = False
            reset[1, [0, T // 2]] = True
    return mask, reset


def make_inputs(case: Case, seed: int = 0):
    """Wx, R (scaled so that R h is O(1)), b in the case's dtype; a valid initial state
    (n >= 1, |c| <= n, finite m) in fp32."""
    g = torch.Generator().manual_seed(seed)
    B, T, H, Dh = case.B, case.T, case.H, case.Dh
    dtype = DTYPES[case.dtype]
    wdtype = dtype if case.weights == "same" else DTYPES[case.weights]
    x = [
        torch.randn(B, T, 4, H, Dh, generator=g).to(dtype),
        (torch.randn(H, Dh, 4, Dh, generator=g) * Dh**-0.5).to(wdtype),
        torch.randn(H, 4, Dh, generator=g).to(wdtype),
    ]
    state = None
    if case.init:
        n = 1 + 3 * torch.rand(B, H, Dh, generator=g)
        c = (2 * torch.rand(B, H, Dh, generator=g) - 1) * n
        state = [torch.tanh(torch.randn(B, H, Dh, generator=g)), c, n, torch.randn(B, H, Dh, generator=g)]
    return x, state


def loss_weights(case: Case, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    w_h = torch.randn(case.B, case.T, case.H, case.Dh, generator=g, dtype=torch.float64)
    w_final = [torch.randn(case.B, case.H, case.Dh, generator=g, dtype=torch.float64) for _ in range(4)]
    return w_h, (w_final if case.final else None)


def run(fn, case: Case, x, state, flags, weights, device, dtype=None):
    """Forward + backward of sum(h * w_h) [+ sum(final * w_final)]; returns (h, final, grads)."""
    cast = (lambda t: t.to(device=device, dtype=dtype)) if dtype else (lambda t: t.to(device))
    leaves = [cast(t).requires_grad_() for t in x + (state or [])]
    mask, reset = (None if f is None else f.to(device) for f in flags)
    init = SLSTMState(*leaves[3:]) if state is not None else None
    h, last = fn(*leaves[:3], init, forget_gate=case.forget, mask=mask, reset=reset)
    w_h, w_final = weights
    loss = (h.double() * w_h.to(device)).sum()
    if w_final is not None:
        for t, w in zip(last, w_final):
            loss = loss + (t.double() * w.to(device)).sum()
    grads = torch.autograd.grad(loss, leaves)
    return h, last, grads


def check_case(case: Case, seed: int = 0):
    x, state = make_inputs(case, seed)
    flags = make_flags(case)
    weights = loss_weights(case)
    h, last, grads = run(slstm_triton, case, x, state, flags, weights, DEVICE)
    # ground truth: the same (possibly rounded) values in fp64
    h_ref, last_ref, grads_ref = run(slstm_recurrent, case, x, state, flags, weights, "cpu", torch.float64)

    dtype = DTYPES[case.dtype]
    tol = TOL[dtype]
    assert h.dtype == dtype and h.shape == (case.B, case.T, case.H, case.Dh)
    assert_close(h, h_ref, *tol, "h")
    assert all(a.dtype == torch.float32 for a in last)
    assert_state_close(last, last_ref, *tol, "final")
    for name, g, g_ref, leaf in zip(GRAD_NAMES, grads, grads_ref, x + (state or [])):
        assert g.dtype == leaf.dtype, f"d{name} dtype {g.dtype} != {leaf.dtype}"
        assert_close(g, g_ref, *tol, f"d{name}")


CASES = [
    Case(B=2, T=1, H=2, Dh=16),
    Case(B=3, T=7, H=2, Dh=8, init=False, forget="exp"),
    Case(B=17, T=7, H=2, Dh=16, mask=True, reset=True),
    Case(B=2, T=7, H=2, Dh=16, final=False, reset=True),
    Case(B=2, T=63, H=2, Dh=32, mask=True, reset=True),
    Case(B=2, T=100, H=2, Dh=16, forget="exp", mask=True, reset=True),
    Case(B=2, T=100, H=3, Dh=4, init=False),
    Case(B=2, T=63, H=2, Dh=16, dtype="bf16", mask=True, reset=True),
    Case(B=3, T=20, H=2, Dh=16, dtype="bf16", forget="exp", weights="fp32", reset=True),
    Case(B=2, T=20, H=2, Dh=16, dtype="fp16", forget="exp", mask=True),
    # R streamed in small tiles: partial tiles (Dh = 24), several tiles per step, BN != BK
    Case(B=2, T=20, H=2, Dh=24, forget="exp", mask=True, reset=True, variant="streamed16x16"),
    Case(B=3, T=7, H=2, Dh=32, dtype="bf16", init=False, variant="streamed16x32"),
    # the shipped large head dims with the shipped streamed tiles, a few steps each
    Case(B=2, T=3, H=1, Dh=128, mask=True, reset=True),
    Case(B=2, T=3, H=2, Dh=192, dtype="bf16", forget="exp"),
    Case(B=2, T=2, H=1, Dh=512, reset=True),
]
GPU_CASES = [
    Case(B=2, T=256, H=2, Dh=16, mask=True, reset=True),
    Case(B=2, T=1000, H=2, Dh=32, forget="exp", reset=True),
    Case(B=4, T=100, H=4, Dh=64, mask=True, reset=True),
    Case(B=4, T=100, H=4, Dh=64, dtype="bf16", forget="exp", weights="fp32"),
    Case(B=4, T=100, H=4, Dh=128, mask=True, reset=True),
    Case(B=3, T=100, H=4, Dh=192, forget="exp", reset=True),
    Case(B=3, T=100, H=4, Dh=192, dtype="bf16"),
    Case(B=2, T=256, H=4, Dh=256, mask=True, reset=True),
    Case(B=20, T=63, H=4, Dh=512, dtype="bf16", reset=True),
    Case(B=2, T=100, H=4, Dh=512, forget="exp", mask=True),
]


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id) for c in CASES] + [pytest.param(c, id=c.id, marks=GPU_ONLY) for c in GPU_CASES],
)
def test_matches_recurrent_reference(case, monkeypatch):
    if case.variant.startswith("streamed"):
        bn, bk = case.variant.removeprefix("streamed").split("x")
        monkeypatch.setattr(tf, "RESIDENT_MAX_DH", 0)
        monkeypatch.setattr(tf, "STREAM_BN", int(bn))
        monkeypatch.setattr(tf, "STREAM_BK", int(bk))
    check_case(case)


def test_gradient_of_wx_alone():
    """Only Wx requires a gradient (R, b frozen, no state): the dR / db reductions are
    skipped and dWx is unchanged."""
    case = Case(B=2, T=5, H=2, Dh=16, reset=True)
    x, _ = make_inputs(case, seed=12)
    _, reset = make_flags(case)
    w = torch.randn(case.B, case.T, case.H, case.Dh, generator=torch.Generator().manual_seed(13))
    wx = x[0].clone().requires_grad_()
    (g_alone,) = torch.autograd.grad((slstm_triton(wx, *x[1:], reset=reset)[0] * w).sum(), [wx])
    leaves = [t.clone().requires_grad_() for t in x]
    g_all = torch.autograd.grad((slstm_triton(*leaves, reset=reset)[0] * w).sum(), leaves)
    assert torch.equal(g_alone, g_all[0])


def test_explicit_empty_initial_state_gets_zero_m_gradient():
    """The empty state passed explicitly (m0 = -inf) equals no state; gradients reach
    h0, c0, n0 and are exactly 0 for m0, also through masked first tokens."""
    case = Case(B=2, T=9, H=2, Dh=16, mask=True)
    x, _ = make_inputs(case, seed=1)
    state = list(slstm_empty_state(case.B, case.H, case.Dh))
    flags = make_flags(case)
    weights = loss_weights(case)
    h, last, grads = run(slstm_triton, case, x, state, flags, weights, DEVICE)
    h_ref, last_ref, grads_ref = run(slstm_recurrent, case, x, state, flags, weights, "cpu", torch.float64)
    assert_close(h, h_ref, *TOL[torch.float32], "h")
    for name, g, g_ref in zip(GRAD_NAMES, grads, grads_ref):
        assert_close(g, g_ref, *TOL[torch.float32], f"d{name}")
    # left padding on row 0: the final-state weight of m reaches m0 through the masked tokens
    assert torch.equal(grads[6][1], torch.zeros_like(grads[6][1]))


def test_stabiliser_ties_split_like_torch_maximum():
    """log f + m_{t-1} == i_t exactly at every step after the first (exp forget gate with
    f = 0, constant i, R = 0, b = 0): the gradient of m_t = max(.,.) is split evenly like
    ``torch.maximum`` in the reference, so dWx and dR still match."""
    case = Case(B=2, T=6, H=2, Dh=16, forget="exp")
    x, state = make_inputs(case, seed=2)
    x[0][:, :, 0] = 0.5
    x[0][:, :, 1] = 0.0
    x[1] = torch.zeros_like(x[1])
    x[2] = torch.zeros_like(x[2])
    weights = loss_weights(case)
    h, last, grads = run(slstm_triton, case, x, None, (None, None), weights, DEVICE)
    h_ref, last_ref, grads_ref = run(slstm_recurrent, case, x, None, (None, None), weights, "cpu", torch.float64)
    assert_close(h, h_ref, *TOL[torch.float32], "h")
    for name, g, g_ref in zip(GRAD_NAMES, grads, grads_ref):
        assert_close(g, g_ref, *TOL[torch.float32], f"d{name}")


def test_two_calls_with_carried_state_equal_one_call():
    """Truncated BPTT: the final state of the first call feeds the second; outputs and
    every gradient (through the carried h, c, n and m) equal one call over the whole row."""
    case = Case(B=2, T=20, H=2, Dh=16, mask=True, reset=True)
    x, state = make_inputs(case, seed=3)
    mask, reset = make_flags(case)
    w = torch.randn(case.B, case.T, case.H, case.Dh, generator=torch.Generator().manual_seed(4))

    def grads(split):
        leaves = [t.clone().requires_grad_() for t in x + state]
        wx, R, b = leaves[:3]
        init = SLSTMState(*leaves[3:])
        if split is None:
            h, _ = slstm_triton(wx, R, b, init, mask=mask, reset=reset)
        else:
            h1, mid = slstm_triton(wx[:, :split], R, b, init, mask=mask[:, :split], reset=reset[:, :split])
            h2, _ = slstm_triton(wx[:, split:], R, b, mid, mask=mask[:, split:], reset=reset[:, split:])
            h = torch.cat([h1, h2], dim=1)
        return h, torch.autograd.grad((h * w).sum(), leaves)

    h_full, g_full = grads(None)
    h_split, g_split = grads(9)
    assert_close(h_split, h_full, 1e-6, 1e-7, "h")
    for name, a, e in zip(GRAD_NAMES, g_split, g_full):
        assert_close(a, e, 1e-6, 1e-7, f"d{name}")


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")
@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
def test_extreme_preactivations_stay_finite(forget):
    """Wx = +-1e4 with random signs (b and R h on top), with an initial state, masks and
    resets: outputs, final state and every gradient stay finite."""
    case = Case(B=2, T=13, H=2, Dh=16, forget=forget, mask=True, reset=True)
    x, state = make_inputs(case, seed=5)
    g = torch.Generator().manual_seed(6)
    x[0] = (torch.randint(0, 2, x[0].shape, generator=g) * 2 - 1).float() * 1e4
    h, last, grads = run(slstm_triton, case, x, state, make_flags(case), loss_weights(case), DEVICE)
    assert torch.isfinite(h).all()
    for name, t in zip(SLSTMState._fields, last):
        assert torch.isfinite(t).all(), f"final {name}"
    for name, t in zip(GRAD_NAMES, grads):
        assert torch.isfinite(t).all(), f"d{name}"


# ------------------------------------------------------------------------ API


def test_empty_sequence_returns_initial_state():
    case = Case(B=2, T=0, H=1, Dh=8)
    x, state = make_inputs(case)
    h, last = slstm_triton(*x, state)
    assert h.shape == (2, 0, 1, 8)
    for a, e in zip(last, state):
        assert torch.equal(a, e)
    _, empty = slstm_triton(*x)
    for a, e in zip(empty, slstm_empty_state(2, 1, 8)):
        assert torch.equal(a, e)


def test_non_contiguous_inputs_are_handled():
    case = Case(B=2, T=5, H=2, Dh=16)
    x, state = make_inputs(case, seed=9)
    # (T, B, ...) memory viewed as (B, T, ...)
    wx_nc = x[0].transpose(0, 1).contiguous().transpose(0, 1)
    assert not wx_nc.is_contiguous()
    with torch.no_grad():
        h, _ = slstm_triton(wx_nc, *x[1:], state)
        h_ref, _ = slstm_triton(*x, state)
    assert torch.equal(h, h_ref)


def _small(B=1, T=5, H=2, Dh=8, dtype=torch.float32):
    return [torch.randn(B, T, 4, H, Dh, dtype=dtype), torch.randn(H, Dh, 4, Dh, dtype=dtype), torch.randn(H, 4, Dh, dtype=dtype)]


BAD_CALLS = [
    pytest.param(lambda: slstm_triton(*_small(), forget_gate="tanh"), ValueError, "forget_gate", id="forget-gate"),
    pytest.param(lambda: slstm_triton(torch.randn(1, 5, 3, 2, 8), *_small()[1:]), ValueError, "(B, T, 4, H, Dh)", id="wx-3-gates"),
    pytest.param(lambda: slstm_triton(_small()[0], torch.randn(2, 8, 32), _small()[2]), ValueError, "(2, 8, 4, 8)", id="R-flat"),
    pytest.param(lambda: slstm_triton(*_small()[:2], torch.randn(4, 2, 8)), ValueError, "(2, 4, 8)", id="b-gate-major"),
    pytest.param(lambda: slstm_triton(*_small(dtype=torch.float64)), TypeError, "float64", id="fp64"),
    pytest.param(lambda: slstm_triton(*_small(Dh=1100)), ValueError, "Dh=1100", id="Dh1100"),
    pytest.param(lambda: slstm_triton(*(lambda x: [x[0], x[1].to("meta"), x[2]])(_small())), ValueError, "one device", id="R-other-device"),
    pytest.param(lambda: slstm_triton(*_small(), mask=torch.ones(1, 4, dtype=torch.bool)), ValueError, "(1, 5)", id="mask-shape"),
    pytest.param(lambda: slstm_triton(*_small(), reset=torch.zeros(1, 5)), TypeError, "bool", id="reset-float"),
    pytest.param(lambda: slstm_triton(*_small(), slstm_empty_state(1, 2, 4)), ValueError, "initial state h", id="state-shape"),
    pytest.param(lambda: slstm_triton(*_small(), tuple(slstm_empty_state(1, 2, 8))[:3]), ValueError, "(h, c, n, m)", id="state-3"),
]


@pytest.mark.parametrize("call, exc, fragment", BAD_CALLS)
def test_invalid_inputs_raise(call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value)


def test_package_imports_without_triton():
    """``xlstm_lm_kernels.slstm`` imports with triton missing; only the Triton names fail."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # any import of triton now raises ImportError
        import xlstm_lm_kernels.slstm as s
        assert callable(s.slstm_recurrent) and callable(s.slstm_step)
        for name in ("slstm_triton", "slstm_step_triton"):
            try:
                getattr(s, name)
            except ImportError:
                print("lazy ok", name)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.count("lazy ok") == 2, proc.stderr[-2000:]


def test_lazy_exports_are_the_triton_functions():
    import xlstm_lm_kernels.slstm as s

    assert s.slstm_triton is slstm_triton and s.slstm_step_triton is slstm_step_triton


# ------------------------------------------------------------------------ decode step


STEP_CASES = [
    pytest.param(2, 3, 16, "fp32", "sigmoid", False, id="B2-H3-Dh16-fp32-sigmoid"),
    pytest.param(3, 2, 16, "fp32", "exp", True, id="B3-H2-Dh16-fp32-exp-reset"),
    pytest.param(2, 2, 80, "fp32", "sigmoid", True, id="B2-H2-Dh80-fp32-sigmoid-reset"),
    pytest.param(17, 2, 8, "bf16", "exp", True, id="B17-H2-Dh8-bf16-exp-reset"),
]


@pytest.mark.parametrize("B, H, Dh, dname, forget, with_reset", STEP_CASES)
def test_step_matches_reference(B, H, Dh, dname, forget, with_reset):
    """A few decode steps from the empty state with the carried state equal ``slstm_step`` (fp64)."""
    g = torch.Generator().manual_seed(10)
    dtype = DTYPES[dname]
    R = (torch.randn(H, Dh, 4, Dh, generator=g) * Dh**-0.5).to(dtype)
    b = torch.randn(H, 4, Dh, generator=g).to(dtype)
    s = slstm_empty_state(B, H, Dh)
    s_ref = SLSTMState(*(t.double() for t in s))
    for step in range(3):
        wx = torch.randn(B, 4, H, Dh, generator=g).to(dtype)
        reset = (torch.arange(B) % 2 == step % 2) if with_reset and step > 0 else None
        s = slstm_step_triton(wx, s, R, b, forget, reset=reset)
        s_ref = slstm_step(wx.double(), s_ref, R.double(), b.double(), forget, reset=reset)
        assert all(a.dtype == torch.float32 and a.shape == (B, H, Dh) for a in s)
        # the state is fp32 from inputs that are exact in fp64: fp32 rounding only
        assert_state_close(s, s_ref, 1e-5, 1e-6, f"step {step} state")


def test_step_equals_sequence_kernel():
    """Decoding token by token with the step kernel reproduces the fused sequence kernel."""
    case = Case(B=2, T=6, H=2, Dh=16, reset=True)
    x, state = make_inputs(case, seed=11)
    _, reset = make_flags(case)
    with torch.no_grad():
        h, last = slstm_triton(*x, state, reset=reset)
    s = SLSTMState(*state)
    for t in range(case.T):
        s = slstm_step_triton(x[0][:, t], s, x[1], x[2], reset=reset[:, t])
        assert_close(s.h, h[:, t], 1e-6, 1e-7, f"h at step {t}")
    assert_state_close(s, last, 1e-6, 1e-7, "final")


def test_step_validates_inputs():
    wx, R, b = torch.randn(2, 4, 2, 8), torch.randn(2, 8, 4, 8), torch.randn(2, 4, 8)
    state = slstm_empty_state(2, 2, 8)
    with pytest.raises(ValueError, match=r"\(B, 4, H, Dh\)"):
        slstm_step_triton(wx[:, :3], state, R, b)
    with pytest.raises(ValueError, match="state c"):
        slstm_step_triton(wx, state._replace(c=torch.zeros(2, 8, 2)), R, b)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        slstm_step_triton(wx, state, R, b, reset=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="forget_gate"):
        slstm_step_triton(wx, state, R, b, "relu")
    with pytest.raises(TypeError, match="float64"):
        slstm_step_triton(wx.double(), state, R, b)


# ------------------------------------------------------------------------ GPU compilation

_COMPILE_SCRIPT = textwrap.dedent(
    """
    import inspect, triton
    from triton.backends.compiler import GPUTarget
    from xlstm_lm_kernels.slstm import step_triton as st, triton_fused as tf

    INTS = {"B", "T", "H", "DH"}

    def signature(fn, io, w, consts):
        sig = {}
        for n in inspect.signature(fn.fn).parameters:
            if n in consts: sig[n] = "constexpr"
            elif n in INTS: sig[n] = "i32"
            elif n in ("wx_ptr", "out_ptr", "dout_ptr"): sig[n] = "*" + io
            elif n in ("R_ptr", "b_ptr"): sig[n] = "*" + w
            elif n in ("mask_ptr", "reset_ptr"): sig[n] = "*i8"
            elif n.endswith("_ptr"): sig[n] = "*fp32"
            else: raise KeyError(n)
        return sig

    kernels = [getattr(tf, n) for n in dir(tf) if n.startswith("slstm_") and "_kernel_" in n]
    kernels.append(st.slstm_step_fwd_kernel)
    # sm_90 bf16 at the shipped tile sizes (DP = 64 resident, 64 x 64 streamed tiles) with
    # masks and resets; sm_80 fp32 with small tiles and neither (both sides of every branch)
    configs = (
        (90, "bf16", "bf16", dict(BB=16, DP=64, BN=64, BK=64, EXP_FORGET=False), True, 8),
        (80, "fp32", "fp32", dict(BB=16, DP=16, BN=32, BK=16, EXP_FORGET=True), False, 4),
    )
    for arch, io, w, blocks, flag, warps in configs:
        for k in kernels:
            params = inspect.signature(k.fn).parameters
            consts = dict(blocks, HAS_MASK=flag, HAS_RESET=flag, DOT_PREC=tf.DOT_PRECISION)
            consts = {n: v for n, v in consts.items() if n in params}
            src = triton.compiler.ASTSource(fn=k, signature=signature(k, io, w, consts), constexprs=consts)
            triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": 2})
            print("compiled", arch, k.fn.__name__, flush=True)
    """
)


@pytest.mark.skipif(not has_ptxas(), reason="Triton's NVIDIA backend (ptxas) is not installed")
def test_kernels_compile_for_gpu_targets():
    """Compile every kernel to a cubin for sm_90 (bf16) and sm_80 (fp32) without a GPU:
    catches code that runs under the interpreter but that the GPU compiler rejects
    (dot shapes, dtypes, control flow on tensor values)."""
    compile_offline(_COMPILE_SCRIPT, expected=2 * 5)
