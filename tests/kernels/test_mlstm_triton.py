"""Tests of the Triton mLSTM kernels (chunkwise forward + backward, decode step).

Ground truth is the fp64 recurrent definition (``mlstm_recurrent``) run on the very
inputs the kernel sees (bf16 inputs are compared on their bf16 values). Every test
checks forward outputs, the final (C, n, m) and every gradient (q, k, v, i, f and the
initial C, n, m, with gradients also flowing in through the final state) at T = 1,
63, 100, 200, 256, 1000, several head dims (powers of two and not), B > 1, H > 1, chunk
sizes 16/32/64/128/256, fp32 / bf16 / fp16, with and without initial state and with
document boundaries. Output buffers are poisoned with NaN, so an element a kernel
does not write fails ``assert_close``.

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` (tests/conftest.py), and
a separate test compiles every kernel for sm_80 / sm_90 with Triton's bundled ptxas,
which catches code the interpreter accepts but the GPU compiler does not.
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
from xlstm_lm_kernels.mlstm import MLSTMState, mlstm, mlstm_recurrent, mlstm_step  # noqa: E402
from xlstm_lm_kernels.mlstm.chunkwise_triton import mlstm_chunkwise_triton  # noqa: E402
from xlstm_lm_kernels.mlstm.step_triton import mlstm_step_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GPU_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="too slow under the Triton interpreter; runs on GPU")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GRAD_NAMES = ("q", "k", "v", "i", "f", "C0", "n0", "m0")

# (relative RMS, max-abs floor) against the fp64 recurrence on the same inputs.
# fp32: rounding of fp32 arithmetic in two summation orders (measured <= 8e-6).
# fp16: outputs and dq/dk/dv are rounded to fp16 (2^-11) on store (measured <= 6e-4).
# bf16: dot operands and outputs are rounded to bf16 (2^-8): measured <= 9e-3 for h, the
#   state and dq/dk/dv. The gate gradients are reverse cumulative sums of q.dq - k.dk,
#   bf16-accurate terms that partly cancel (measured <= 1.5e-2 over other seeds): 3e-2.
TOL = {
    torch.float32: {"out": (1e-4, 1e-6), "grad": (1e-4, 1e-6), "gate": (1e-4, 1e-6)},
    torch.float16: {"out": (3e-3, 1e-4), "grad": (3e-3, 1e-4), "gate": (3e-3, 1e-4)},
    torch.bfloat16: {"out": (2e-2, 1e-3), "grad": (2e-2, 1e-3), "gate": (3e-2, 1e-3)},
}


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every buffer the launchers allocate with torch.empty starts as NaN."""
    monkeypatch.setattr(launch, "POISON_OUTPUTS", True)


@dataclass(frozen=True)
class Case:
    B: int
    H: int
    T: int
    Dqk: int
    Dv: int
    chunk: int
    dtype: str = "fp32"
    init: bool = True
    reset: str | None = None  # None, "docs" (several boundaries) or "t0"
    final: str = "all"  # which final-state entries the loss uses: "all", "none", "m"
    eps: float = 1e-6

    @property
    def id(self) -> str:
        parts = [f"B{self.B}-T{self.T}-H{self.H}-Dqk{self.Dqk}-Dv{self.Dv}-C{self.chunk}-{self.dtype}"]
        parts.append("init" if self.init else "zero")
        if self.reset:
            parts.append(f"reset-{self.reset}")
        if self.final != "all":
            parts.append(f"final-{self.final}")
        if self.eps != 1e-6:
            parts.append(f"eps{self.eps:g}")
        return "-".join(parts)


def make_reset(case: Case) -> torch.Tensor | None:
    if case.reset is None:
        return None
    reset = torch.zeros(case.B, case.T, dtype=torch.bool)
    if case.reset == "t0":
        reset[:, 0] = True
        return reset
    # row 0: a boundary on a chunk border, two in one chunk, a 1-token document;
    # row 1: a boundary at t = 0 and one in the last (padded) chunk
    for t in (case.chunk, case.chunk + 3, case.chunk + 4, case.T - 1):
        if 0 < t < case.T:
            reset[0, t] = True
    reset[1 % case.B, [0, max(case.T - 5, 0)]] = True
    return reset


def make_inputs(case: Case, seed: int = 0):
    """Random inputs in the case's dtype (q, k, v) and fp32 (gates, state).

    Gates: i ~ N(0, 1), f ~ N(1, 2): the forget gate spans nearly closed to nearly open
    and the stabiliser switches between its candidates."""
    g = torch.Generator().manual_seed(seed)
    B, H, T, Dqk, Dv = case.B, case.H, case.T, case.Dqk, case.Dv
    dtype = DTYPES[case.dtype]

    def rnd(*shape, scale=1.0, shift=0.0, dt=torch.float32):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dt)

    x = [rnd(B, H, T, Dqk, dt=dtype), rnd(B, H, T, Dqk, dt=dtype), rnd(B, H, T, Dv, dt=dtype), rnd(B, H, T), rnd(B, H, T, scale=2.0, shift=1.0)]
    state = [rnd(B, H, Dqk, Dv), rnd(B, H, Dqk), rnd(B, H)] if case.init else None
    return x, state


def loss_weights(case: Case, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    shapes = ((case.B, case.H, case.T, case.Dv), (case.B, case.H, case.Dqk, case.Dv), (case.B, case.H, case.Dqk), (case.B, case.H))
    w = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    if case.final == "none":
        w[1:] = [None, None, None]
    elif case.final == "m":
        w[1:3] = [None, None]
    return w


def run(fn, case: Case, x, state, reset, weights, device, dtype=None):
    """Forward + backward of sum(h * w_h) + sum(final * w_final); returns (h, final, grads)."""
    cast = (lambda t: t.to(device=device, dtype=dtype)) if dtype else (lambda t: t.to(device))
    leaves = [cast(t).requires_grad_() for t in x]
    st_leaves = [cast(t).requires_grad_() for t in state] if state is not None else []
    r = None if reset is None else reset.to(device)
    want_state = case.final != "none"
    out = fn(*leaves, MLSTMState(*st_leaves) if state is not None else None, want_state, reset=r)
    h, last = (out, None) if not want_state else out
    loss = (h.double() * weights[0].to(device)).sum()
    if last is not None:
        for t, w in zip(last, weights[1:]):
            if w is not None:
                loss = loss + (t.double() * w.to(device)).sum()
    grads = torch.autograd.grad(loss, leaves + st_leaves)
    return h, last, grads


def triton_fn(case: Case):
    def fn(q, k, v, i, f, state, ret, reset=None):
        return mlstm_chunkwise_triton(q, k, v, i, f, state, ret, chunk_size=case.chunk, eps=case.eps, reset=reset)

    return fn


def reference_fn(case: Case):
    def fn(q, k, v, i, f, state, ret, reset=None):
        return mlstm_recurrent(q, k, v, i, f, state, ret, eps=case.eps, reset=reset)

    return fn


def check_case(case: Case, seed: int = 0):
    x, state = make_inputs(case, seed)
    reset = make_reset(case)
    weights = loss_weights(case)
    h, last, grads = run(triton_fn(case), case, x, state, reset, weights, DEVICE)
    # ground truth: the same (possibly bf16-rounded) values in fp64
    h_ref, last_ref, grads_ref = run(reference_fn(case), case, x, state, reset, weights, "cpu", torch.float64)

    dtype = DTYPES[case.dtype]
    tol = TOL[dtype]
    assert h.dtype == dtype and h.shape == (case.B, case.H, case.T, case.Dv)
    assert_close(h, h_ref, *tol["out"], "h")
    if last is not None:
        for name, a, e in zip(MLSTMState._fields, last, last_ref):
            assert a.dtype == torch.float32, name
            assert_close(a, e, *tol["out"], f"final {name}")
    names = GRAD_NAMES if state is not None else GRAD_NAMES[:5]
    for name, g, g_ref, leaf in zip(names, grads, grads_ref, x + (state or [])):
        assert g.dtype == leaf.dtype, name
        kind = "gate" if name in ("i", "f") else "grad"
        assert_close(g, g_ref, *tol[kind], f"d{name}")


CASES = [
    # T = 1: one token in a padded chunk
    Case(B=2, H=2, T=1, Dqk=16, Dv=32, chunk=16),
    # T not a multiple of the chunk, Dqk > Dv, no initial state
    Case(B=2, H=2, T=63, Dqk=32, Dv=16, chunk=16, init=False),
    Case(B=2, H=3, T=100, Dqk=64, Dv=64, chunk=32),
    # T a multiple of the chunk, several chunks
    Case(B=1, H=2, T=256, Dqk=16, Dv=32, chunk=32),
    # one 64-token block per chunk; head dims that are not powers of two
    Case(B=2, H=2, T=100, Dqk=24, Dv=40, chunk=64),
    # head dims over the 64-wide tile: loops over Dqk / Dv tiles
    Case(B=1, H=2, T=40, Dqk=130, Dv=72, chunk=16),
    # chunks of 128 / 256 tokens: 64 x 64 sub-blocks inside a chunk
    Case(B=1, H=2, T=200, Dqk=16, Dv=16, chunk=128, reset="docs"),
    Case(B=1, H=1, T=300, Dqk=16, Dv=16, chunk=256),
    # document boundaries, with and without initial state
    Case(B=2, H=2, T=100, Dqk=16, Dv=32, chunk=16, reset="docs"),
    Case(B=2, H=2, T=63, Dqk=32, Dv=16, chunk=32, init=False, reset="docs"),
    Case(B=2, H=2, T=40, Dqk=16, Dv=16, chunk=16, reset="t0"),
    # the loss ignores the final state / uses only its m (gradient through the stabiliser)
    Case(B=2, H=2, T=63, Dqk=16, Dv=32, chunk=16, final="none"),
    Case(B=2, H=2, T=63, Dqk=16, Dv=32, chunk=16, final="m"),
    # a large eps makes every gradient path through the stabilisers m visible
    Case(B=2, H=2, T=63, Dqk=16, Dv=32, chunk=16, reset="docs", eps=0.5),
    # low precision
    Case(B=2, H=2, T=100, Dqk=64, Dv=64, chunk=32, dtype="bf16"),
    Case(B=2, H=2, T=63, Dqk=16, Dv=32, chunk=16, dtype="bf16", init=False, reset="docs"),
    Case(B=2, H=2, T=100, Dqk=32, Dv=32, chunk=32, dtype="fp16"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_matches_recurrent_reference(case):
    check_case(case)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Case(B=1, H=1, T=1000, Dqk=16, Dv=16, chunk=64, reset="docs"), id="B1-T1000-H1-Dqk16-Dv16-C64-fp32-init-reset-docs"),
        pytest.param(Case(B=2, H=4, T=1000, Dqk=64, Dv=128, chunk=128, dtype="bf16"), id="B2-T1000-H4-Dqk64-Dv128-C128-bf16-init", marks=GPU_ONLY),
        pytest.param(Case(B=2, H=4, T=1000, Dqk=128, Dv=256, chunk=64), id="B2-T1000-H4-Dqk128-Dv256-C64-fp32-init", marks=GPU_ONLY),
    ],
)
def test_long_sequence_matches_recurrent_reference(case):
    check_case(case)


def test_two_calls_with_carried_state_equal_one_call():
    """Truncated BPTT: the final state of the first call feeds the second; outputs and
    every gradient (through the carried C, n and m) equal one call over the whole row."""
    case = Case(B=2, H=2, T=70, Dqk=16, Dv=16, chunk=16)
    x, state = make_inputs(case, seed=3)
    w = torch.randn(case.B, case.H, case.T, case.Dv, generator=torch.Generator().manual_seed(4))

    def grads(split):
        leaves = [t.clone().requires_grad_() for t in x + state]
        q, k, v, i, f = leaves[:5]
        if split is None:
            h = mlstm_chunkwise_triton(q, k, v, i, f, MLSTMState(*leaves[5:]), chunk_size=16)
        else:
            h1, mid = mlstm_chunkwise_triton(*(t[:, :, :split] for t in (q, k, v, i, f)), MLSTMState(*leaves[5:]), True, 16)
            h2 = mlstm_chunkwise_triton(*(t[:, :, split:] for t in (q, k, v, i, f)), mid, chunk_size=16)
            h = torch.cat([h1, h2], dim=2)
        return h, torch.autograd.grad((h * w).sum(), leaves)

    h_full, g_full = grads(None)
    h_split, g_split = grads(37)
    assert_close(h_split, h_full, 1e-5, 1e-6, "h")
    for name, a, e in zip(GRAD_NAMES, g_split, g_full):
        assert_close(a, e, 1e-5, 1e-6, f"d{name}")


# ------------------------------------------------------------------------ extreme gates


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")
@pytest.mark.parametrize("regime", ["isign-fsign", "isign-fpos", "ipos-fsign"])
def test_extreme_gates_stay_finite(regime):
    """Gate pre-activations of +-1e4 (random signs, or all +1e4): outputs, final state and
    every gradient stay finite, also where m falls far below zero (exp(-m) = inf), where
    the PyTorch references give NaN gradients (see test_mlstm_ref.py)."""
    case = Case(B=2, H=2, T=37, Dqk=16, Dv=16, chunk=16, reset="docs")
    x, state = make_inputs(case, seed=5)
    g = torch.Generator().manual_seed(6)
    i_mode, f_mode = regime.split("-")
    for idx, mode in ((3, i_mode[1:]), (4, f_mode[1:])):
        if mode == "pos":
            x[idx] = torch.full_like(x[idx], 1e4)
        else:
            x[idx] = (torch.randint(0, 2, x[idx].shape, generator=g) * 2 - 1).float() * 1e4
    if regime == "isign-fsign":
        x[3][0, 0, 0] = x[4][0, 0, 0] = -1e4
    h, last, grads = run(triton_fn(case), case, x, state, make_reset(case), loss_weights(case), DEVICE)
    assert torch.isfinite(h).all()
    for name, t in zip(MLSTMState._fields, last):
        assert torch.isfinite(t).all(), f"final {name}"
    for name, t in zip(GRAD_NAMES, grads):
        assert torch.isfinite(t).all(), f"d{name}"


# ------------------------------------------------------------------------ API


def test_dispatch_backend_triton():
    case = Case(B=2, H=2, T=30, Dqk=16, Dv=16, chunk=16, reset="docs")
    x, state = make_inputs(case, seed=8)
    reset = make_reset(case)
    with torch.no_grad():
        h, last = mlstm(*x, initial_state=state, return_last_state=True, backend="triton", chunk_size=16, eps=0.1, reset=reset)
        h_ref, last_ref = mlstm_chunkwise_triton(*x, state, True, 16, 0.1, reset=reset)
    assert torch.equal(h, h_ref)
    for a, e in zip(last, last_ref):
        assert torch.equal(a, e)


def test_empty_sequence_returns_initial_state():
    case = Case(B=2, H=1, T=0, Dqk=16, Dv=8, chunk=16)
    x, state = make_inputs(case)
    h, last = mlstm_chunkwise_triton(*x, state, True)
    assert h.shape == (2, 1, 0, 8)
    for a, e in zip(last, state):
        assert torch.equal(a, e)


def test_non_contiguous_inputs_are_handled():
    case = Case(B=2, H=2, T=20, Dqk=16, Dv=16, chunk=16)
    x, state = make_inputs(case, seed=9)
    # (B, T, H, D) memory viewed as (B, H, T, D): a common layout after a projection
    x_nc = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in x]
    assert not x_nc[0].is_contiguous()
    with torch.no_grad():
        h = mlstm_chunkwise_triton(*x_nc, state, chunk_size=16)
        h_ref = mlstm_chunkwise_triton(*x, state, chunk_size=16)
    assert torch.equal(h, h_ref)


def _small(B=1, H=1, T=5, Dqk=16, Dv=16, dtype=torch.float32):
    return [torch.randn(B, H, T, Dqk, dtype=dtype), torch.randn(B, H, T, Dqk, dtype=dtype), torch.randn(B, H, T, Dv, dtype=dtype), torch.randn(B, H, T), torch.randn(B, H, T)]


BAD_CALLS = [
    pytest.param(lambda: mlstm_chunkwise_triton(*_small(), chunk_size=48), ValueError, "chunk_size must be one of", id="chunk48"),
    pytest.param(lambda: mlstm_chunkwise_triton(*_small(), chunk_size=8), ValueError, "chunk_size must be one of", id="chunk8"),
    pytest.param(lambda: mlstm_chunkwise_triton(*_small(Dqk=600)), ValueError, "Dqk=600", id="Dqk600"),
    pytest.param(lambda: mlstm_chunkwise_triton(*_small(Dv=513)), ValueError, "Dv=513", id="Dv513"),
    pytest.param(lambda: mlstm_chunkwise_triton(*_small(dtype=torch.float64)), TypeError, "float64", id="fp64"),
    pytest.param(lambda: mlstm_chunkwise_triton(*(lambda x: [x[0], x[1].half(), *x[2:]])(_small())), TypeError, "one dtype", id="mixed-dtype"),
    pytest.param(lambda: mlstm_chunkwise_triton(*(lambda x: [x[0], x[1].to("meta"), *x[2:]])(_small())), ValueError, "one device", id="k-other-device"),
    pytest.param(lambda: mlstm_chunkwise_triton(*_small(), reset=torch.zeros(1, 4, dtype=torch.bool)), ValueError, "(1, 5)", id="reset-shape"),
    pytest.param(lambda: mlstm_chunkwise_triton(*_small(), reset=torch.zeros(1, 5)), TypeError, "bool", id="reset-float"),
    pytest.param(lambda: mlstm_chunkwise_triton(*_small(T=5)[:3], torch.randn(1, 1, 4), torch.randn(1, 1, 5)), ValueError, "(1, 1, 5)", id="i-shape"),
    pytest.param(
        lambda: mlstm_chunkwise_triton(*_small(), (torch.zeros(1, 1, 16, 8), torch.zeros(1, 1, 16), torch.zeros(1, 1))),
        ValueError, "initial state C", id="state-shape",
    ),
    pytest.param(lambda: mlstm_chunkwise_triton(*_small(), eps=-1.0), ValueError, "eps", id="eps-negative"),
]


@pytest.mark.parametrize("call, exc, fragment", BAD_CALLS)
def test_invalid_inputs_raise(call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value)


def test_package_imports_without_triton():
    """``xlstm_lm_kernels.mlstm`` imports with triton missing; only the Triton names fail."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # any import of triton now raises ImportError
        import xlstm_lm_kernels.mlstm as m
        assert callable(m.mlstm) and callable(m.mlstm_chunkwise_torch)
        try:
            m.mlstm_chunkwise_triton
        except ImportError:
            print("lazy ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "lazy ok" in proc.stdout, proc.stderr[-2000:]


# ------------------------------------------------------------------------ decode step


STEP_CASES = [
    pytest.param(2, 3, 16, 32, "fp32", False, id="B2-H3-Dqk16-Dv32-fp32"),
    pytest.param(2, 3, 16, 32, "fp32", True, id="B2-H3-Dqk16-Dv32-fp32-reset"),
    pytest.param(1, 2, 130, 72, "fp32", True, id="B1-H2-Dqk130-Dv72-fp32-reset"),
    pytest.param(3, 2, 64, 64, "bf16", True, id="B3-H2-Dqk64-Dv64-bf16-reset"),
]


@pytest.mark.parametrize("B, H, Dqk, Dv, dname, with_reset", STEP_CASES)
def test_step_matches_reference(B, H, Dqk, Dv, dname, with_reset):
    """A few decode steps with the carried state equal ``mlstm_step`` (fp64)."""
    g = torch.Generator().manual_seed(10)
    dtype = DTYPES[dname]
    state = MLSTMState(torch.randn(B, H, Dqk, Dv, generator=g), torch.randn(B, H, Dqk, generator=g), torch.randn(B, H, generator=g))
    s, s_ref = state, MLSTMState(*(t.double() for t in state))
    for step in range(3):
        q, k = (torch.randn(B, H, Dqk, generator=g).to(dtype) for _ in range(2))
        v = torch.randn(B, H, Dv, generator=g).to(dtype)
        i, f = torch.randn(B, H, generator=g), torch.randn(B, H, generator=g) * 2 + 1
        reset = (torch.arange(B) % 2 == step % 2) if with_reset else None
        h, s = mlstm_step_triton(q, k, v, i, f, s, reset=reset)
        h_ref, s_ref = mlstm_step(*(t.double() for t in (q, k, v, i, f)), s_ref, reset=reset)
        assert h.dtype == dtype and h.shape == (B, H, Dv)
        tol = (1e-5, 1e-6) if dtype == torch.float32 else (1e-2, 1e-3)  # bf16: h rounded on store
        assert_close(h, h_ref, *tol, f"step {step} h")
        for name, a, e in zip(MLSTMState._fields, s, s_ref):
            assert a.dtype == torch.float32
            assert_close(a, e, 1e-5, 1e-6, f"step {step} state {name}")


def test_step_validates_inputs():
    q = torch.randn(2, 2, 16)
    state = MLSTMState(torch.zeros(2, 2, 16, 8), torch.zeros(2, 2, 16), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="initial state C"):
        mlstm_step_triton(q, q, torch.randn(2, 2, 4), torch.randn(2, 2), torch.randn(2, 2), state)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        mlstm_step_triton(q, q, torch.randn(2, 2, 8), torch.randn(2, 2), torch.randn(2, 2), state, reset=torch.zeros(3, dtype=torch.bool))


# ------------------------------------------------------------------------ GPU compilation

_COMPILE_SCRIPT = textwrap.dedent(
    """
    import inspect, triton
    from triton.backends.compiler import GPUTarget
    from xlstm_lm_kernels.mlstm import chunkwise_triton as ct, step_triton as st

    INTS = {"T", "Tp", "NC", "H", "DQK", "DV", "NK", "NV", "BH"}
    IO = {"q_ptr", "k_ptr", "v_ptr", "h_ptr", "dh_ptr", "dv_ptr"}

    def signature(fn, io, consts):
        sig = {}
        for n in inspect.signature(fn.fn).parameters:
            if n in consts: sig[n] = "constexpr"
            elif n in INTS: sig[n] = "i32"
            elif n in ("scale", "eps"): sig[n] = "fp32"
            elif n in IO: sig[n] = "*" + io
            elif n in ("seg_ptr", "use_ptr", "reset_ptr"): sig[n] = "*i32"
            elif n.endswith("_ptr"): sig[n] = "*fp32"
            else: raise KeyError(n)
        return sig

    kernels = [getattr(ct, n) for n in dir(ct) if n.startswith("mlstm_chunkwise_") and "_kernel_" in n]
    kernels.append(st.mlstm_step_fwd_kernel)
    # sm_90 bf16 with 128-token chunks in 64 x 64 sub-blocks and every optional input;
    # sm_80 fp32 with small tiles and none of them (both sides of every constexpr branch)
    configs = (
        (90, "bf16", dict(L=128, BL=64, BK=64, BV=64, DOT_BF16=True), True, 8),
        (80, "fp32", dict(L=32, BL=32, BK=16, BV=32, DOT_BF16=False), False, 4),
    )
    for arch, io, blocks, flag, warps in configs:
        for k in kernels:
            params = inspect.signature(k.fn).parameters
            consts = dict(blocks, UPCAST=False, HAS_INIT=flag, HAS_RESET=flag, HAS_DFINAL=flag, BLOCK=128)
            consts = {n: v for n, v in consts.items() if n in params}
            src = triton.compiler.ASTSource(fn=k, signature=signature(k, io, consts), constexprs=consts)
            triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": 2})
            print("compiled", arch, k.fn.__name__, flush=True)
    """
)


@pytest.mark.skipif(not has_ptxas(), reason="Triton's NVIDIA backend (ptxas) is not installed")
def test_kernels_compile_for_gpu_targets():
    """Compile every kernel to a cubin for sm_90 (bf16) and sm_80 (fp32) without a GPU:
    catches code that runs under the interpreter but that the GPU compiler rejects
    (dot shapes, dtypes, control flow on tensor values)."""
    compile_offline(_COMPILE_SCRIPT, expected=2 * 8)
