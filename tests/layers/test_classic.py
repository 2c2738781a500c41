"""Tests of the classic recurrent layers (xlstm_lm/layers/classic.py).

References: ElmanRNN, LSTMForget and GRU are checked against torch.nn.RNN/LSTM/GRU
(outputs, final states and every gradient); CuDNNLSTM against LSTMForget; LSTM1997
against LSTMForget with its forget gate pinned open; PeepholeLSTM against a
step-by-step reference written out gate by gate below. Every cell is also checked for
the two-halves invariance, gradcheck (initial state and parameters included), a
backward linear in T (plain and masked paths), bf16 behaviour and its error messages.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from tests.helpers import assert_backward_linear_in_T, assert_close
from xlstm_lm.layers.classic import (
    GRU,
    LSTM1997,
    CuDNNLSTM,
    ElmanRNN,
    LSTMForget,
    PeepholeLSTM,
    RecurrentLayer,
)

FACTORIES = {
    "elman": lambda I, H, **kw: ElmanRNN(I, H, **kw),
    "elman-relu": lambda I, H, **kw: ElmanRNN(I, H, "relu", **kw),
    "lstm1997": lambda I, H, **kw: LSTM1997(I, H, **kw),
    "lstm": lambda I, H, **kw: LSTMForget(I, H, **kw),
    "peephole": lambda I, H, **kw: PeepholeLSTM(I, H, **kw),
    "gru": lambda I, H, **kw: GRU(I, H, **kw),
    "cudnn": lambda I, H, **kw: CuDNNLSTM(I, H, **kw),
}
ALL_CELLS = [pytest.param(name, id=name) for name in FACTORIES]

DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
# Relative RMS tolerance of two implementations of the same math (summation order differs).
RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def make_layer(name: str, I: int, H: int, dtype: torch.dtype, seed: int = 0) -> RecurrentLayer:
    """A layer with every parameter random, so that no zero-initialised bias or
    peephole can hide a missing term."""
    torch.manual_seed(seed)
    layer = FACTORIES[name](I, H, dtype=dtype)
    with torch.no_grad():
        for param in layer.parameters():
            param.uniform_(-0.6, 0.6)
    return layer


def random_state(layer: RecurrentLayer, B: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(B, layer.hidden_size, dtype=dtype) for _ in layer.state_names)


# ---------------------------------------------------------------------------------------
# Against torch.nn references: outputs, final states, every gradient.
# ---------------------------------------------------------------------------------------


def _torch_reference(case: str, I: int, H: int, dtype: torch.dtype):
    """(ours, reference module, reference call with our interface, {our param name: reference param name})."""
    torch.manual_seed(0)
    if case in ("elman-tanh", "elman-relu"):
        ref = nn.RNN(I, H, nonlinearity=case.split("-")[1], batch_first=True, dtype=dtype)
        ours = ElmanRNN.from_torch(ref)
    elif case == "lstm":
        ref = nn.LSTM(I, H, batch_first=True, dtype=dtype)
        ours = LSTMForget.from_torch(ref)
    elif case == "gru":
        ref = nn.GRU(I, H, batch_first=True, dtype=dtype)
        ours = GRU.from_torch(ref)
    elif case == "cudnn-vs-lstm":
        # Here the wrapper is the module under test and LSTMForget (itself checked
        # against torch.nn.LSTM above) the reference.
        ref = make_layer("cudnn", I, H, dtype)
        ours = LSTMForget.from_torch(ref)
        names = {n: f"lstm.{n}_l0" for n, _ in ours.named_parameters()}
        return ours, ref, ref, names
    else:
        raise AssertionError(case)

    def call(x, state):
        if state is None:
            out, final = ref(x)
        elif isinstance(ref, nn.LSTM):
            out, final = ref(x, tuple(s.unsqueeze(0) for s in state))
        else:
            out, final = ref(x, state[0].unsqueeze(0))
        final = final if isinstance(final, tuple) else (final,)
        return out, tuple(s.squeeze(0) for s in final)

    names = {n: f"{n}_l0" for n, _ in ours.named_parameters()}
    return ours, ref, call, names


@pytest.mark.parametrize(
    "with_state", [pytest.param(False, id="zero-state"), pytest.param(True, id="given-state")]
)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize(
    "B, T, I, H",
    [
        pytest.param(1, 1, 2, 3, id="B1-T1-I2-H3"),
        pytest.param(3, 7, 5, 6, id="B3-T7-I5-H6"),
        pytest.param(2, 33, 8, 16, id="B2-T33-I8-H16"),
    ],
)
@pytest.mark.parametrize("case", ["elman-tanh", "elman-relu", "lstm", "gru", "cudnn-vs-lstm"])
def test_matches_torch_reference(case, B, T, I, H, dtype_name, with_state):
    dtype = DTYPES[dtype_name]
    ours, ref, ref_call, param_names = _torch_reference(case, I, H, dtype)
    x = torch.randn(B, T, I, dtype=dtype, requires_grad=True)
    state = random_state(ours, B, dtype) if with_state else None
    if state is not None:
        state = tuple(s.requires_grad_() for s in state)

    out, final = ours(x, state)
    ref_out, ref_final = ref_call(x, state)
    rtol = RTOL[dtype]
    assert_close(out, ref_out, rtol, 0.0, "outputs")
    assert len(final) == len(ref_final) == len(ours.state_names)
    for part, s, ref_s in zip(ours.state_names, final, ref_final, strict=True):
        assert_close(s, ref_s, rtol, 0.0, f"final {part}")

    # A random linear functional of all outputs, so every gradient path is used.
    weights = [torch.randn_like(t) for t in (out, *final)]

    def grads(outputs, params):
        loss = sum((w * t).sum() for w, t in zip(weights, outputs, strict=True))
        inputs = [x, *(state or ()), *params]
        return torch.autograd.grad(loss, inputs)

    our_params = dict(ours.named_parameters())
    ref_params = dict(ref.named_parameters())
    names = list(param_names)
    got = grads((out, *final), [our_params[n] for n in names])
    want = grads((ref_out, *ref_final), [ref_params[param_names[n]] for n in names])
    labels = ["x"] + [f"initial {p}" for p in (ours.state_names if state else ())] + names
    for label, g, g_ref in zip(labels, got, want, strict=True):
        assert_close(g, g_ref, rtol, 0.0, f"grad of {label}")


def test_from_torch_without_bias_gives_zero_biases():
    ref = nn.LSTM(3, 4, bias=False, batch_first=True, dtype=torch.float64)
    ours = LSTMForget.from_torch(ref)
    assert torch.count_nonzero(ours.bias_ih) == 0 and torch.count_nonzero(ours.bias_hh) == 0
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    assert_close(ours(x)[0], ref(x)[0], 1e-12, 0.0)


@pytest.mark.parametrize(
    "cls, module, problem",
    [
        pytest.param(LSTMForget, nn.LSTM(3, 4, num_layers=2), "num_layers=2", id="lstm-2layers"),
        pytest.param(CuDNNLSTM, nn.LSTM(3, 4, bidirectional=True), "bidirectional", id="cudnn-bidirectional"),
        pytest.param(LSTMForget, nn.LSTM(3, 4, proj_size=2), "proj_size=2", id="lstm-proj"),
        pytest.param(GRU, nn.GRU(3, 4, num_layers=3), "num_layers=3", id="gru-3layers"),
        pytest.param(ElmanRNN, nn.RNN(3, 4, bidirectional=True), "bidirectional", id="elman-bidirectional"),
    ],
)
def test_from_torch_rejects_what_one_layer_cannot_hold(cls, module, problem):
    with pytest.raises(ValueError, match=problem):
        cls.from_torch(module)


def test_from_torch_rejects_wrong_module_type():
    with pytest.raises(TypeError, match=r"torch\.nn\.GRU"):
        GRU.from_torch(nn.LSTM(3, 4))


# ---------------------------------------------------------------------------------------
# LSTM-1997: the constant error carousel, and the forget gate as contrast.
# ---------------------------------------------------------------------------------------

CLOSED = -1e4
"""A gate pre-activation this negative gives sigmoid == 0 and sigmoid' == 0 exactly in fp64."""


def _jacobian(out_BH: torch.Tensor, in_BH: torch.Tensor) -> torch.Tensor:
    """d out / d in as a [B*H, B*H] matrix (rows: outputs)."""
    n = out_BH.numel()
    eye = torch.eye(n, dtype=out_BH.dtype).view(n, *out_BH.shape)
    (jac,) = torch.autograd.grad(out_BH, in_BH, grad_outputs=eye, is_grads_batched=True, retain_graph=True)
    return jac.reshape(n, n)


def test_lstm1997_input_gate_closed_carries_cell_state_exactly():
    B, T, I, H = 2, 1000, 3, 4
    dtype = torch.float64
    layer = make_layer("lstm1997", I, H, dtype)
    with torch.no_grad():
        # Random input-gate weights stay; the bias swamps them.
        layer.bias[:H] = CLOSED
        # Output gate open-ish, so h (which feeds the gates) does depend on c.
        layer.bias[2 * H :] = 0.0
    x = torch.randn(B, T, I, dtype=dtype)
    h0, c0 = random_state(layer, B, dtype)
    c0.requires_grad_()

    _, (h_T, c_T) = layer(x, (h0, c0))

    assert torch.equal(c_T, c0), "the closed-gate CEC must carry c exactly"
    identity = torch.eye(B * H, dtype=dtype)
    assert torch.equal(_jacobian(c_T, c0), identity), "dc_T/dc_0 must be the identity"
    # Sanity: h really is a function of c here.
    assert _jacobian(h_T, c0).abs().max() > 1e-3

    # Contrast: with the input gate open the carousel is written to, c moves.
    with torch.no_grad():
        layer.bias[:H] = 0.0
    _, (_, c_T_open) = layer(x, (h0, c0))
    assert (c_T_open - c0).abs().max() > 1e-2


@pytest.mark.parametrize("T", [pytest.param(10, id="T10"), pytest.param(1000, id="T1000")])
def test_forget_gate_decays_cell_gradient(T):
    B, I, H = 2, 3, 4
    dtype = torch.float64
    layer = make_layer("lstm", I, H, dtype)
    with torch.no_grad():
        # Gate order i, f, g, o: close the input gate, pin the forget gate at 0.9.
        layer.bias_ih[:H] = CLOSED
        layer.weight_ih[H : 2 * H] = 0.0
        layer.weight_hh[H : 2 * H] = 0.0
        layer.bias_ih[H : 2 * H] = math.log(9.0)
        layer.bias_hh[H : 2 * H] = 0.0
    f = torch.sigmoid(torch.tensor(math.log(9.0), dtype=dtype))
    x = torch.randn(B, T, I, dtype=dtype)
    h0, c0 = random_state(layer, B, dtype)
    c0.requires_grad_()

    _, (_, c_T) = layer(x, (h0, c0))

    expected = f**T * torch.eye(B * H, dtype=dtype)
    assert_close(_jacobian(c_T, c0), expected, 1e-10, 0.0, f"dc_T/dc_0 = 0.9^{T}")
    assert_close(c_T, f**T * c0, 1e-10, 0.0, "c_T = 0.9^T c_0")
    assert (f**T).item() < 0.35


def test_lstm1997_equals_lstm_with_forget_gate_pinned_open():
    B, T, I, H = 3, 13, 5, 6
    dtype = torch.float64
    old = make_layer("lstm1997", I, H, dtype)
    lstm = LSTMForget(I, H, dtype=dtype)
    with torch.no_grad():
        # LSTM1997 blocks (i, z, o) -> LSTMForget blocks (i, f, g, o); f = sigmoid(1e4) == 1 exactly.
        w_ih, w_hh, bias = (p.view(3, H, -1) for p in (old.weight_ih, old.weight_hh, old.bias))
        for new, src in ((lstm.weight_ih, w_ih), (lstm.weight_hh, w_hh), (lstm.bias_ih, bias)):
            new.view(4, H, -1)[[0, 2, 3]] = src
            new.view(4, H, -1)[1] = 0.0
        lstm.bias_ih[H : 2 * H] = -CLOSED
        lstm.bias_hh.zero_()
    x = torch.randn(B, T, I, dtype=dtype)
    state = random_state(old, B, dtype)

    out, final = old(x, state)
    ref_out, ref_final = lstm(x, state)
    assert_close(out, ref_out, 1e-12, 0.0, "outputs")
    for part, s, ref_s in zip(old.state_names, final, ref_final, strict=True):
        assert_close(s, ref_s, 1e-12, 0.0, f"final {part}")


def test_lstm1997_init_follows_documented_scheme():
    layer = LSTM1997(4, 7)
    bias_i, bias_z, bias_o = layer.bias.detach().view(3, 7)
    assert torch.equal(bias_i, torch.full((7,), -2.0))
    assert torch.equal(bias_z, torch.zeros(7))
    # 7 units in 3 contiguous blocks: sizes 3, 2, 2.
    assert bias_o.tolist() == [-2.0, -2.0, -2.0, -4.0, -4.0, -6.0, -6.0]


@pytest.mark.parametrize("name", ["lstm", "peephole", "cudnn"])
def test_forget_gate_bias_init(name):
    layer = FACTORIES[name](3, 5)
    params = dict(layer.named_parameters())
    bias_names = [n for n in params if "bias" in n]
    total = sum(params[n].detach() for n in bias_names).view(4, 5)
    assert torch.equal(total, torch.tensor([0.0, 1.0, 0.0, 0.0]).repeat_interleave(5).view(4, 5))


# ---------------------------------------------------------------------------------------
# Peephole LSTM against a gate-by-gate reference.
# ---------------------------------------------------------------------------------------


def peephole_reference(layer: PeepholeLSTM, x, h, c):
    """Step-by-step peephole LSTM (Gers et al. 2002), one matrix per gate."""
    H = layer.hidden_size
    W = dict(zip("ifgo", layer.weight_ih.split(H), strict=True))
    U = dict(zip("ifgo", layer.weight_hh.split(H), strict=True))
    b = dict(zip("ifgo", layer.bias.split(H), strict=True))
    p = dict(zip("ifo", layer.weight_peephole, strict=True))
    outs = []
    for t in range(x.shape[1]):
        pre = {gate: x[:, t] @ W[gate].T + h @ U[gate].T + b[gate] for gate in "ifgo"}
        i = torch.sigmoid(pre["i"] + p["i"] * c)
        f = torch.sigmoid(pre["f"] + p["f"] * c)
        c = f * c + i * torch.tanh(pre["g"])
        o = torch.sigmoid(pre["o"] + p["o"] * c)
        h = o * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, 1), (h, c)


def test_peephole_matches_gate_by_gate_reference():
    B, T, I, H = 3, 11, 5, 6
    dtype = torch.float64
    layer = make_layer("peephole", I, H, dtype)
    x = torch.randn(B, T, I, dtype=dtype)
    h0, c0 = random_state(layer, B, dtype)
    with torch.no_grad():
        out, (h, c) = layer(x, (h0, c0))
        ref_out, (ref_h, ref_c) = peephole_reference(layer, x, h0, c0)
    assert_close(out, ref_out, 1e-12, 0.0, "outputs")
    assert_close(h, ref_h, 1e-12, 0.0, "final h")
    assert_close(c, ref_c, 1e-12, 0.0, "final c")


def test_peephole_without_peepholes_is_lstm():
    B, T, I, H = 2, 9, 4, 5
    dtype = torch.float64
    peep = make_layer("peephole", I, H, dtype)
    lstm = make_layer("lstm", I, H, dtype)
    with torch.no_grad():
        peep.weight_peephole.zero_()
        for name in ("weight_ih", "weight_hh"):
            getattr(peep, name).copy_(getattr(lstm, name))
        peep.bias.copy_(lstm.bias_ih + lstm.bias_hh)
    x = torch.randn(B, T, I, dtype=dtype)
    state = random_state(lstm, B, dtype)
    assert_close(peep(x, state)[0], lstm(x, state)[0], 1e-12, 0.0)


# ---------------------------------------------------------------------------------------
# Invariances and gradients, every cell.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("split", [pytest.param(s, id=f"split{s}of11") for s in (0, 1, 6)])
@pytest.mark.parametrize("name", ALL_CELLS)
def test_two_halves_with_carried_state_equal_full_run(name, split, dtype_name):
    B, T, I, H = 2, 11, 4, 5
    dtype = DTYPES[dtype_name]
    layer = make_layer(name, I, H, dtype)
    x = torch.randn(B, T, I, dtype=dtype)
    state = random_state(layer, B, dtype)

    out, final = layer(x, state)
    out_a, mid = layer(x[:, :split], state)
    out_b, final_ab = layer(x[:, split:], mid)

    rtol = RTOL[dtype]
    assert out_a.shape == (B, split, H)
    assert_close(torch.cat([out_a, out_b], dim=1), out, rtol, 0.0, "outputs")
    for part, s, s_ab in zip(layer.state_names, final, final_ab, strict=True):
        assert_close(s_ab, s, rtol, 0.0, f"final {part}")


@pytest.mark.parametrize("name", ALL_CELLS)
def test_gradcheck_inputs_state_and_parameters(name):
    B, T, I, H = 2, 3, 3, 4
    dtype = torch.float64
    layer = make_layer(name, I, H, dtype)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    x = torch.randn(B, T, I, dtype=dtype, requires_grad=True)
    state = tuple(s.requires_grad_() for s in random_state(layer, B, dtype))
    num_state = len(state)

    def fn(x, *rest):
        state, params = rest[:num_state], rest[num_state:]
        out, final = functional_call(layer, dict(zip(names, params, strict=True)), (x, state))
        return (out, *final)

    assert torch.autograd.gradcheck(fn, (x, *state, *params))


@pytest.mark.parametrize("flags", ["plain", "mask-reset"])
@pytest.mark.parametrize("name", ALL_CELLS)
def test_backward_is_linear_in_sequence_length(name, flags):
    """The time loops (plain, and the per-token path of masks and resets) walk inputs
    unbound once: no step builds a zero gradient the size of the whole sequence."""

    def loss(T):
        g = torch.Generator().manual_seed(T)
        layer = make_layer(name, 3, 4, torch.float32)
        x = torch.randn(1, T, 3, generator=g).requires_grad_()
        kw = {}
        if flags == "mask-reset":
            kw = {"mask": torch.rand(1, T, generator=g) < 0.9, "reset": torch.rand(1, T, generator=g) < 0.2}
        out, final = layer(x, **kw)
        return out.sum() + final[-1].sum()

    assert_backward_linear_in_T(loss)


@pytest.mark.parametrize("name", ALL_CELLS)
def test_zero_state_default_and_init_state(name):
    B, T, I, H = 3, 4, 2, 5
    layer = make_layer(name, I, H, torch.float32)
    state = layer.init_state(B)
    assert len(state) == len(layer.state_names) == len(layer.state_size)
    assert layer.state_names[0] == "h" and layer.state_size == (H,) * len(state)
    for s in state:
        assert s.shape == (B, H) and s.dtype == torch.float32 and torch.count_nonzero(s) == 0
    assert layer.init_state(B, dtype=torch.float64)[0].dtype == torch.float64

    x = torch.randn(B, T, I)
    out, final = layer(x)
    out_zero, final_zero = layer(x, state)
    assert out.shape == (B, T, H)
    assert torch.equal(out, out_zero)
    for s, s_zero in zip(final, final_zero, strict=True):
        assert torch.equal(s, s_zero)
    assert torch.equal(out[:, -1], final[0]), "state[0] is the last output h_T"


@pytest.mark.parametrize("name", ALL_CELLS)
def test_bf16_computes_in_bf16_and_tracks_fp64(name):
    B, T, I, H = 2, 16, 8, 8
    layer64 = make_layer(name, I, H, torch.float64)
    layer16 = make_layer(name, I, H, torch.float64).to(torch.bfloat16)
    # Same (bf16-representable) weights and inputs in both, so only the arithmetic differs.
    layer64.load_state_dict(layer16.to(torch.float64).state_dict())
    layer16.to(torch.bfloat16)
    x16 = torch.randn(B, T, I).to(torch.bfloat16)
    state16 = tuple(s.to(torch.bfloat16) for s in random_state(layer64, B, torch.float64))

    out16, final16 = layer16(x16, state16)
    out64, final64 = layer64(x16.double(), tuple(s.double() for s in state16))

    assert out16.dtype == torch.bfloat16 and all(s.dtype == torch.bfloat16 for s in final16)
    # Loose because bf16 keeps 8 mantissa bits (rounding ~4e-3 per op); the observed
    # relative RMS error is 3e-3..5e-3 for every cell. A wrong equation gives O(1).
    assert_close(out16, out64, 2e-2, 0.0, "bf16 outputs")
    for part, s16, s64 in zip(layer64.state_names, final16, final64, strict=True):
        assert_close(s16, s64, 2e-2, 0.0, f"bf16 final {part}")


# ---------------------------------------------------------------------------------------
# Error messages.
# ---------------------------------------------------------------------------------------


def _zeros_state(layer: RecurrentLayer, *shape: int, dtype: torch.dtype = torch.float32):
    return tuple(torch.zeros(*shape, dtype=dtype) for _ in layer.state_names)


BAD_CALLS = {
    # name: (call arguments from a layer with I=5, H=4; expected message regex)
    "2d-input": (
        lambda layer: (torch.randn(3, 5), None),
        r"expected input of shape \[B, T, 5\].*2-D.*unsqueeze",
    ),
    "4d-input": (
        lambda layer: (torch.randn(2, 3, 5, 1), None),
        r"expected input of shape \[B, T, 5\].*4-D",
    ),
    "wrong-features": (
        lambda layer: (torch.randn(2, 3, 6), None),
        r"\[B, T, 5\].*got shape \[2, 3, 6\]",
    ),
    "wrong-dtype": (
        lambda layer: (torch.randn(2, 3, 5, dtype=torch.float64), None),
        r"dtype torch.float64",
    ),
    "state-shape": (
        lambda layer: (torch.randn(2, 3, 5), _zeros_state(layer, 2, 3)),
        r"expected state 'h' of shape \[B, hidden_size\] = \[2, 4\], got \[2, 3\]",
    ),
    "state-batch": (
        lambda layer: (torch.randn(2, 3, 5), _zeros_state(layer, 1, 4)),
        r"= \[2, 4\], got \[1, 4\]",
    ),
    "state-count": (
        lambda layer: (torch.randn(2, 3, 5), (torch.zeros(2, 4),) * 3),
        r"expected state to be a tuple \(h(, c)?\) of [12] tensor\(s\), got 3",
    ),
    "state-bare-tensor": (
        lambda layer: (torch.randn(2, 3, 5), torch.zeros(2, 4)),
        r"expected state to be a tuple",
    ),
    "state-dtype": (
        lambda layer: (torch.randn(2, 3, 5), _zeros_state(layer, 2, 4, dtype=torch.float64)),
        r"state 'h' has dtype torch.float64",
    ),
}


@pytest.mark.parametrize("bad", list(BAD_CALLS))
@pytest.mark.parametrize("name", ALL_CELLS)
def test_bad_inputs_raise_value_error_naming_expected_shape(name, bad):
    layer = FACTORIES[name](5, 4)
    make_args, message = BAD_CALLS[bad]
    with pytest.raises(ValueError, match=message):
        layer(*make_args(layer))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        ElmanRNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="hidden_size=0"):
        GRU(3, 0)
