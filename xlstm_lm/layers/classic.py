"""Classic recurrent layers in plain PyTorch: Elman RNN, LSTM (1997, forget-gate,
peephole), GRU, and a thin wrapper around ``torch.nn.LSTM`` (the cuDNN speed reference).

One layer is one recurrent layer over a whole sequence. All six share one interface
(:class:`RecurrentLayer`), so a block wrapper can treat them uniformly:

- ``forward(x_BTI, state=None) -> (h_BTH, state)``: batch-first input ``[B, T, I]``;
  outputs ``h_t`` for every step ``[B, T, H]`` and the final state, a tuple of
  ``[B, H]`` tensors named by ``state_names`` (``state[0]`` is always ``h``).
  ``state=None`` means zeros. ``T == 0`` returns empty outputs and the state unchanged.
- ``init_state(batch_size, device=None, dtype=None)``: the zero state.
- ``reset_parameters()``: the initialisation recommended by each cell's paper.

Layout: ``B`` batch, ``T`` time, ``I`` input features, ``H`` hidden units, ``G``
stacked gate pre-activations (``k * H`` for ``k`` gates). Gate blocks inside a
stacked weight follow ``torch.nn.LSTM``/``torch.nn.GRU`` order (LSTM: i, f, g, o;
GRU: r, z, n), so weights copy over with ``from_torch``.

The pure-PyTorch cells project the inputs of all timesteps with one matmul, then
loop over time for the recurrent part. All math runs in the parameters' dtype
(fp32, fp64 or bf16): inputs and states must already have that dtype; nothing is
silently upcast. In bf16 the cell state is rounded to bf16 at every step, exactly
as the dtype implies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GRU",
    "LSTM1997",
    "CuDNNLSTM",
    "ElmanRNN",
    "LSTMForget",
    "PeepholeLSTM",
    "RecurrentLayer",
]

State = tuple[Tensor, ...]


class RecurrentLayer(nn.Module):
    """Common interface and input validation of the classic recurrent layers.

    Subclasses set ``state_names`` and implement ``_project_inputs`` (the
    input-to-gates projection of all timesteps at once) and ``_step`` (one recurrent
    step); :class:`CuDNNLSTM` also overrides ``_forward`` with its fused sequence call.
    The time loops walk tensors unbound once before the loop: indexing ``x[:, t]``
    inside it would make autograd build a full-size zero gradient for every step, a
    backward quadratic in T.
    """

    state_names: ClassVar[tuple[str, ...]] = ("h",)
    """Names of the state tensors, in the order of the state tuple; ``h`` comes first."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(
                f"{type(self).__name__}: input_size and hidden_size must be positive, "
                f"got input_size={input_size}, hidden_size={hidden_size}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size

    @property
    def state_size(self) -> tuple[int, ...]:
        """Feature size of each state tensor (each is ``[B, hidden_size]``)."""
        return (self.hidden_size,) * len(self.state_names)

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """Zero state: one ``[batch_size, hidden_size]`` tensor per name in ``state_names``.

        ``device`` and ``dtype`` default to those of the layer's parameters.
        """
        weight = next(self.parameters())
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        return tuple(
            torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype) for _ in self.state_names
        )

    def forward(
        self,
        x: Tensor,
        state: Sequence[Tensor] | None = None,
        mask: Tensor | None = None,
        reset: Tensor | None = None,
    ) -> tuple[Tensor, State]:
        """Run the layer over a sequence.

        Args:
            x: input ``[B, T, input_size]`` (batch first), in the parameters' dtype.
            state: initial state, a tuple of ``[B, hidden_size]`` tensors named by
                ``state_names``; ``None`` means zeros.
            mask: optional ``[B, T]`` bool; False tokens (left padding) leave the state untouched.
            reset: optional ``[B, T]`` bool; True tokens start a new document: the state
                entering them is replaced by zeros.

        Returns:
            ``(h, state)``: outputs ``[B, T, hidden_size]`` for every step and the
            final state (same structure as ``state``).
        """
        self._check_input(x)
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        else:
            state = self._check_state(state, x)
        if x.shape[1] == 0:
            return x.new_zeros(x.shape[0], 0, self.hidden_size), state
        for name, flags in (("mask", mask), ("reset", reset)):
            if flags is not None and tuple(flags.shape) != tuple(x.shape[:2]):
                raise ValueError(
                    f"{type(self).__name__}: {name} must be [B, T] = {list(x.shape[:2])}, got {list(flags.shape)}"
                )
        if mask is not None or reset is not None:
            return self._forward_masked(
                x, state, None if mask is None else mask.bool(), None if reset is None else reset.bool()
            )
        return self._forward(x, state)

    def _forward_masked(
        self, x_BTI: Tensor, state: State, mask_BT: Tensor | None, reset_BT: Tensor | None = None
    ) -> tuple[Tensor, State]:
        # One recurrent step per token: zero the entering state where a document
        # starts, keep the old state where the mask is False.
        no_flags = [None] * x_BTI.shape[1]
        steps = zip(
            self._project_inputs(x_BTI).unbind(1),
            no_flags if reset_BT is None else reset_BT.unbind(1),
            no_flags if mask_BT is None else mask_BT.unbind(1),
        )
        h_list = []
        for xp_BG, reset_B, mask_B in steps:
            if reset_B is not None:
                r = reset_B[:, None]
                state = tuple(torch.where(r, torch.zeros_like(s), s) for s in state)
            new = self._step(xp_BG, state)
            if mask_B is not None:
                keep = mask_B[:, None]
                new = tuple(torch.where(keep, n, o) for n, o in zip(new, state))
            state = new
            h_list.append(state[0])
        return torch.stack(h_list, dim=1), state

    def _forward(self, x_BTI: Tensor, state: State) -> tuple[Tensor, State]:
        # The input projection of every timestep is one matmul; only the recurrent
        # part is sequential.
        h_list = []
        for xp_BG in self._project_inputs(x_BTI).unbind(1):
            state = self._step(xp_BG, state)
            h_list.append(state[0])
        return torch.stack(h_list, dim=1), state

    def _project_inputs(self, x_BTI: Tensor) -> Tensor:
        raise NotImplementedError

    def _step(self, xp_BG: Tensor, state: State) -> State:
        raise NotImplementedError

    def _check_input(self, x: Tensor) -> None:
        name = type(self).__name__
        expected = f"[B, T, {self.input_size}] (batch first, input_size={self.input_size})"
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a Tensor of shape {expected}, got {type(x).__name__}")
        if x.ndim != 3:
            hint = "; add a batch dimension with x.unsqueeze(0)" if x.ndim == 2 else ""
            raise ValueError(
                f"{name}: expected input of shape {expected}, got a {x.ndim}-D tensor of "
                f"shape {list(x.shape)}{hint}"
            )
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"{name}: expected input of shape {expected}, got shape {list(x.shape)} "
                f"(last dimension {x.shape[-1]} != input_size {self.input_size})"
            )
        weight = next(self.parameters())
        if x.dtype != weight.dtype:
            raise ValueError(
                f"{name}: input dtype {x.dtype} does not match the parameter dtype "
                f"{weight.dtype}; cast the input or call layer.to({x.dtype})"
            )
        if x.device != weight.device:
            raise ValueError(
                f"{name}: input is on {x.device} but the parameters are on {weight.device}; move one of them"
            )

    def _check_state(self, state: Sequence[Tensor], x: Tensor) -> State:
        name = type(self).__name__
        names = ", ".join(self.state_names)
        if isinstance(state, Tensor) or not isinstance(state, Sequence):
            raise ValueError(
                f"{name}: expected state to be a tuple ({names}) of {len(self.state_names)} "
                f"tensor(s), got {type(state).__name__}"
            )
        if len(state) != len(self.state_names):
            raise ValueError(
                f"{name}: expected state to be a tuple ({names}) of {len(self.state_names)} "
                f"tensor(s), got {len(state)}"
            )
        expected_shape = [x.shape[0], self.hidden_size]
        for part, s in zip(self.state_names, state, strict=True):
            if not isinstance(s, Tensor) or list(s.shape) != expected_shape:
                got = list(s.shape) if isinstance(s, Tensor) else type(s).__name__
                raise ValueError(
                    f"{name}: expected state {part!r} of shape [B, hidden_size] = {expected_shape}, got {got}"
                )
            if s.dtype != x.dtype or s.device != x.device:
                raise ValueError(
                    f"{name}: state {part!r} has dtype {s.dtype} on {s.device}, but the input "
                    f"has dtype {x.dtype} on {x.device}; they must match"
                )
        return tuple(state)

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}"


def _uniform_(tensor: Tensor, hidden_size: int) -> None:
    """torch.nn.RNN/LSTM/GRU default init: U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / math.sqrt(hidden_size)
    nn.init.uniform_(tensor, -bound, bound)


def _init_forget_lstm_(
    weight_ih: Tensor, weight_hh: Tensor, biases: Sequence[Tensor], forget_bias: float
) -> None:
    """Weights U(-1/sqrt(H), 1/sqrt(H)); biases zero except the forget gate block of
    the first bias, set to ``forget_bias`` (gate order i, f, g, o)."""
    hidden_size = weight_hh.shape[1]
    with torch.no_grad():
        _uniform_(weight_ih, hidden_size)
        _uniform_(weight_hh, hidden_size)
        for bias in biases:
            bias.zero_()
        biases[0][hidden_size : 2 * hidden_size].fill_(forget_bias)


def _check_torch_rnn(module: nn.Module, expected: type[nn.RNNBase], target: str) -> None:
    """A ``torch.nn`` recurrent module can be copied into a single layer of ``target``."""
    if not isinstance(module, expected):
        raise TypeError(
            f"{target}.from_torch expects a torch.nn.{expected.__name__}, got {type(module).__name__}"
        )
    problems = []
    if module.num_layers != 1:
        problems.append(f"num_layers={module.num_layers} (copy each layer into its own {target})")
    if module.bidirectional:
        problems.append("bidirectional=True")
    if getattr(module, "proj_size", 0):
        problems.append(f"proj_size={module.proj_size}")
    if problems:
        raise ValueError(
            f"{target}.from_torch needs a one-layer unidirectional module, got {', '.join(problems)}"
        )


def _copy_rnn_weights_(
    module: nn.RNNBase, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor
) -> None:
    """Copy ``weight_ih_l0`` etc. of a one-layer torch RNN into the given tensors;
    a module built with ``bias=False`` gives zero biases."""
    with torch.no_grad():
        weight_ih.copy_(module.weight_ih_l0)
        weight_hh.copy_(module.weight_hh_l0)
        if module.bias:
            bias_ih.copy_(module.bias_ih_l0)
            bias_hh.copy_(module.bias_hh_l0)
        else:
            bias_ih.zero_()
            bias_hh.zero_()


def _factory(module: nn.RNNBase) -> dict:
    weight = module.weight_ih_l0
    return {"device": weight.device, "dtype": weight.dtype}


class ElmanRNN(RecurrentLayer):
    r"""Elman (simple recurrent) network layer.

    Elman, "Finding Structure in Time", Cognitive Science 14(2):179-211, 1990::

        h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),   phi = tanh (or relu)

    Same equations, parameter names and init as ``torch.nn.RNN`` (one layer), whose
    weights copy over with :meth:`from_torch`. State: ``(h,)``.
    """

    state_names = ("h",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinearity: str = "tanh",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(input_size, hidden_size)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"ElmanRNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size, **factory))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size, **factory))
        self.bias_hh = nn.Parameter(torch.empty(hidden_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """All weights and biases U(-1/sqrt(H), 1/sqrt(H)), as ``torch.nn.RNN``."""
        with torch.no_grad():
            for param in self.parameters():
                _uniform_(param, self.hidden_size)

    @classmethod
    def from_torch(cls, module: nn.RNN) -> ElmanRNN:
        """An ElmanRNN with the weights (and nonlinearity) of a one-layer ``torch.nn.RNN``."""
        _check_torch_rnn(module, nn.RNN, cls.__name__)
        layer = cls(module.input_size, module.hidden_size, module.nonlinearity, **_factory(module))
        _copy_rnn_weights_(module, layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh)
        return layer

    def _project_inputs(self, x_BTI: Tensor) -> Tensor:
        return F.linear(x_BTI, self.weight_ih, self.bias_ih)

    def _step(self, xp_BH: Tensor, state: State) -> State:
        (h_BH,) = state
        pre_BH = xp_BH + F.linear(h_BH, self.weight_hh, self.bias_hh)
        h_BH = torch.tanh(pre_BH) if self.nonlinearity == "tanh" else torch.relu(pre_BH)
        return (h_BH,)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity!r}"


class LSTM1997(RecurrentLayer):
    r"""The original LSTM without forget gate: input and output gates only.

    Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation
    9(8):1735-1780, 1997. The cell state is a constant error carousel (CEC) whose
    self-loop is fixed at 1::

        i_t = sigmoid(W_i x_t + U_i h_{t-1} + b_i)      input gate
        z_t = tanh   (W_z x_t + U_z h_{t-1} + b_z)      cell input
        o_t = sigmoid(W_o x_t + U_o h_{t-1} + b_o)      output gate
        c_t = c_{t-1} + i_t * z_t                       CEC: dc_t/dc_{t-1} = 1 along the carousel
        h_t = o_t * tanh(c_t)

    Parameters: ``weight_ih [3H, I]``, ``weight_hh [3H, H]``, ``bias [3H]``, gate
    blocks in order (i, z, o). State: ``(h, c)``.

    Differences from the paper, on purpose: the paper squashes the cell input with
    ``4 sigmoid - 2`` (range [-2, 2]) and the cell output with ``2 sigmoid - 1 =
    tanh(x / 2)``; we use ``tanh`` for both, as the "vanilla" LSTM does. The paper
    truncates backpropagation so errors flow back only through the CEC; here autograd
    gives the full gradient (as in Graves & Schmidhuber, 2005).

    Initialisation (``reset_parameters``), following Sec. 4 of the paper:

    - weights U(-1/sqrt(H), 1/sqrt(H)); cell-input bias 0;
    - input gate bias ``input_gate_bias`` (default -2, sigmoid = 0.12) for every
      unit: "internal state drift" is countered by initially biasing input gates
      towards zero, since nothing ever decays the cell state;
    - output gate biases staggered per memory block, ``output_gate_biases`` (default
      -2, -4, -6): the hidden units are split into ``len(output_gate_biases)``
      contiguous, near-equal blocks and block k gets bias ``output_gate_biases[k]``.
      Negative output gate biases counter the "abuse problem" (cells used as
      constant bias units early in training); cells with more negative biases get
      "allocated" later. The paper's experiments used such block-wise staggered
      negative output gate biases.
    """

    state_names = ("h", "c")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        input_gate_bias: float = -2.0,
        output_gate_biases: Sequence[float] = (-2.0, -4.0, -6.0),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(input_size, hidden_size)
        if len(output_gate_biases) == 0:
            raise ValueError("LSTM1997: output_gate_biases needs at least one value (one per memory block)")
        self.input_gate_bias = float(input_gate_bias)
        self.output_gate_biases = tuple(float(b) for b in output_gate_biases)
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size, **factory))
        self.bias = nn.Parameter(torch.empty(3 * hidden_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights U(-1/sqrt(H), 1/sqrt(H)); gate biases as in the class docstring."""
        H = self.hidden_size
        with torch.no_grad():
            _uniform_(self.weight_ih, H)
            _uniform_(self.weight_hh, H)
            bias_i, bias_z, bias_o = self.bias.view(3, H).unbind(0)
            bias_i.fill_(self.input_gate_bias)
            bias_z.zero_()
            # Contiguous near-equal memory blocks; with H < #blocks some blocks are empty.
            blocks = torch.arange(H, device=self.bias.device).tensor_split(len(self.output_gate_biases))
            for units, value in zip(blocks, self.output_gate_biases, strict=True):
                bias_o[units] = value

    def _project_inputs(self, x_BTI: Tensor) -> Tensor:
        return F.linear(x_BTI, self.weight_ih, self.bias)

    def _step(self, xp_BG: Tensor, state: State) -> State:
        h_BH, c_BH = state
        gates_BG = xp_BG + F.linear(h_BH, self.weight_hh)
        i_BH, z_BH, o_BH = gates_BG.chunk(3, dim=-1)
        # No forget gate: the self-loop of the cell state is exactly 1.
        c_BH = c_BH + torch.sigmoid(i_BH) * torch.tanh(z_BH)
        h_BH = torch.sigmoid(o_BH) * torch.tanh(c_BH)
        return h_BH, c_BH


class LSTMForget(RecurrentLayer):
    r"""LSTM with forget gate, the standard modern LSTM.

    Gers, Schmidhuber & Cummins, "Learning to Forget: Continual Prediction with
    LSTM", ICANN 1999 / Neural Computation 12(10):2451-2471, 2000::

        i_t = sigmoid(W_i x_t + b_ii + U_i h_{t-1} + b_hi)
        f_t = sigmoid(W_f x_t + b_if + U_f h_{t-1} + b_hf)
        g_t = tanh   (W_g x_t + b_ig + U_g h_{t-1} + b_hg)
        o_t = sigmoid(W_o x_t + b_io + U_o h_{t-1} + b_ho)
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(c_t)

    Same equations and parameter layout as a one-layer ``torch.nn.LSTM``:
    ``weight_ih [4H, I]``, ``weight_hh [4H, H]``, ``bias_ih [4H]``, ``bias_hh [4H]``,
    gate order (i, f, g, o); copy weights with :meth:`from_torch`. State: ``(h, c)``.

    Init: weights U(-1/sqrt(H), 1/sqrt(H)) as torch; biases zero except the forget
    gate, ``forget_bias`` (default 1.0), so the cell remembers by default at the start
    of training (Gers et al. 1999; Jozefowicz, Zaremba & Sutskever, ICML 2015).
    """

    state_names = ("h", "c")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        forget_bias: float = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(input_size, hidden_size)
        self.forget_bias = float(forget_bias)
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **factory))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **factory))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights U(-1/sqrt(H), 1/sqrt(H)); biases 0 except forget gate = forget_bias."""
        _init_forget_lstm_(self.weight_ih, self.weight_hh, (self.bias_ih, self.bias_hh), self.forget_bias)

    @classmethod
    def from_torch(cls, module: nn.LSTM | CuDNNLSTM) -> LSTMForget:
        """An LSTMForget with the weights of a one-layer ``torch.nn.LSTM`` (or a :class:`CuDNNLSTM`)."""
        if isinstance(module, CuDNNLSTM):
            module = module.lstm
        _check_torch_rnn(module, nn.LSTM, cls.__name__)
        layer = cls(module.input_size, module.hidden_size, **_factory(module))
        _copy_rnn_weights_(module, layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh)
        return layer

    def _project_inputs(self, x_BTI: Tensor) -> Tensor:
        return F.linear(x_BTI, self.weight_ih, self.bias_ih)

    def _step(self, xp_BG: Tensor, state: State) -> State:
        h_BH, c_BH = state
        gates_BG = xp_BG + F.linear(h_BH, self.weight_hh, self.bias_hh)
        i_BH, f_BH, g_BH, o_BH = gates_BG.chunk(4, dim=-1)
        c_BH = torch.sigmoid(f_BH) * c_BH + torch.sigmoid(i_BH) * torch.tanh(g_BH)
        h_BH = torch.sigmoid(o_BH) * torch.tanh(c_BH)
        return h_BH, c_BH

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, forget_bias={self.forget_bias}"


class PeepholeLSTM(RecurrentLayer):
    r"""LSTM with forget gate and diagonal peephole connections.

    Gers & Schmidhuber, "Recurrent Nets that Time and Count", IJCNN 2000; Gers,
    Schraudolph & Schmidhuber, "Learning Precise Timing with LSTM Recurrent
    Networks", JMLR 3:115-143, 2002. The input and forget gates peek at the previous
    cell state, the output gate at the new one::

        i_t = sigmoid(W_i x_t + U_i h_{t-1} + p_i * c_{t-1} + b_i)
        f_t = sigmoid(W_f x_t + U_f h_{t-1} + p_f * c_{t-1} + b_f)
        g_t = tanh   (W_g x_t + U_g h_{t-1} + b_g)
        c_t = f_t * c_{t-1} + i_t * g_t
        o_t = sigmoid(W_o x_t + U_o h_{t-1} + p_o * c_t + b_o)
        h_t = o_t * tanh(c_t)

    Parameters: ``weight_ih [4H, I]``, ``weight_hh [4H, H]``, ``bias [4H]`` (gate order
    i, f, g, o as ``torch.nn.LSTM``), ``weight_peephole [3, H]`` (rows p_i, p_f, p_o;
    diagonal, so one weight per unit and gate). State: ``(h, c)``.

    Init: weights and peepholes U(-1/sqrt(H), 1/sqrt(H)); biases zero except the
    forget gate, ``forget_bias`` (default 1.0).
    """

    state_names = ("h", "c")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        forget_bias: float = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(input_size, hidden_size)
        self.forget_bias = float(forget_bias)
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **factory))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size, **factory))
        self.weight_peephole = nn.Parameter(torch.empty(3, hidden_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights and peepholes U(-1/sqrt(H), 1/sqrt(H)); biases 0 except forget gate."""
        _init_forget_lstm_(self.weight_ih, self.weight_hh, (self.bias,), self.forget_bias)
        with torch.no_grad():
            _uniform_(self.weight_peephole, self.hidden_size)

    def _project_inputs(self, x_BTI: Tensor) -> Tensor:
        return F.linear(x_BTI, self.weight_ih, self.bias)

    def _step(self, xp_BG: Tensor, state: State) -> State:
        h_BH, c_BH = state
        gates_BG = xp_BG + F.linear(h_BH, self.weight_hh)
        i_BH, f_BH, g_BH, o_BH = gates_BG.chunk(4, dim=-1)
        p_i_H, p_f_H, p_o_H = self.weight_peephole.unbind(0)
        i_BH = torch.sigmoid(i_BH + p_i_H * c_BH)
        f_BH = torch.sigmoid(f_BH + p_f_H * c_BH)
        c_BH = f_BH * c_BH + i_BH * torch.tanh(g_BH)
        # The output gate sees the updated cell state c_t, not c_{t-1}.
        o_BH = torch.sigmoid(o_BH + p_o_H * c_BH)
        h_BH = o_BH * torch.tanh(c_BH)
        return h_BH, c_BH

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, forget_bias={self.forget_bias}"


class GRU(RecurrentLayer):
    r"""Gated recurrent unit.

    Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for
    Statistical Machine Translation", EMNLP 2014. Equations as ``torch.nn.GRU``
    (and cuDNN)::

        r_t = sigmoid(W_r x_t + b_ir + U_r h_{t-1} + b_hr)
        z_t = sigmoid(W_z x_t + b_iz + U_z h_{t-1} + b_hz)
        n_t = tanh   (W_n x_t + b_in + r_t * (U_n h_{t-1} + b_hn))
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    The reset gate multiplies ``U_n h_{t-1} + b_hn`` after the matmul, as torch and
    cuDNN do; Cho et al. apply it before (``U_n (r_t * h_{t-1})``). Parameters as a
    one-layer ``torch.nn.GRU``: ``weight_ih [3H, I]``, ``weight_hh [3H, H]``,
    ``bias_ih [3H]``, ``bias_hh [3H]``, gate order (r, z, n); copy weights with
    :meth:`from_torch`. Init as torch: everything U(-1/sqrt(H), 1/sqrt(H)). State: ``(h,)``.
    """

    state_names = ("h",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(input_size, hidden_size)
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size, **factory))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size, **factory))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """All weights and biases U(-1/sqrt(H), 1/sqrt(H)), as ``torch.nn.GRU``."""
        with torch.no_grad():
            for param in self.parameters():
                _uniform_(param, self.hidden_size)

    @classmethod
    def from_torch(cls, module: nn.GRU) -> GRU:
        """A GRU with the weights of a one-layer ``torch.nn.GRU``."""
        _check_torch_rnn(module, nn.GRU, cls.__name__)
        layer = cls(module.input_size, module.hidden_size, **_factory(module))
        _copy_rnn_weights_(module, layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh)
        return layer

    def _project_inputs(self, x_BTI: Tensor) -> Tensor:
        return F.linear(x_BTI, self.weight_ih, self.bias_ih)

    def _step(self, xp_BG: Tensor, state: State) -> State:
        (h_BH,) = state
        xr_BH, xz_BH, xn_BH = xp_BG.chunk(3, dim=-1)
        hr_BH, hz_BH, hn_BH = F.linear(h_BH, self.weight_hh, self.bias_hh).chunk(3, dim=-1)
        r_BH = torch.sigmoid(xr_BH + hr_BH)
        z_BH = torch.sigmoid(xz_BH + hz_BH)
        n_BH = torch.tanh(xn_BH + r_BH * hn_BH)
        h_BH = (1 - z_BH) * n_BH + z_BH * h_BH
        return (h_BH,)


class CuDNNLSTM(RecurrentLayer):
    r"""A one-layer batch-first ``torch.nn.LSTM`` behind the common interface.

    The speed reference: on CUDA ``torch.nn.LSTM`` runs cuDNN's fused LSTM; on CPU
    torch's native kernel. Same equations and init as :class:`LSTMForget`
    (Gers et al. 1999), so ``LSTMForget.from_torch(cudnn_lstm)`` reproduces it.
    The module is ``self.lstm`` (parameters ``lstm.weight_ih_l0`` etc.). State:
    ``(h, c)``, each ``[B, H]`` (``torch.nn.LSTM``'s leading layer axis is hidden).
    """

    state_names = ("h", "c")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        forget_bias: float = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(input_size, hidden_size)
        self.forget_bias = float(forget_bias)
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As :class:`LSTMForget`: weights U(-1/sqrt(H), 1/sqrt(H)); biases 0 except forget gate."""
        lstm = self.lstm
        biases = (lstm.bias_ih_l0, lstm.bias_hh_l0)
        _init_forget_lstm_(lstm.weight_ih_l0, lstm.weight_hh_l0, biases, self.forget_bias)

    @classmethod
    def from_torch(cls, module: nn.LSTM) -> CuDNNLSTM:
        """A CuDNNLSTM holding a copy of the weights of a one-layer ``torch.nn.LSTM``."""
        _check_torch_rnn(module, nn.LSTM, cls.__name__)
        layer = cls(module.input_size, module.hidden_size, **_factory(module))
        lstm = layer.lstm
        _copy_rnn_weights_(module, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
        return layer

    def _forward(self, x_BTI: Tensor, state: State) -> tuple[Tensor, State]:
        h_BH, c_BH = state
        # torch.nn.LSTM wants [num_layers, B, H] states.
        h_BTH, (h_1BH, c_1BH) = self.lstm(x_BTI, (h_BH.unsqueeze(0), c_BH.unsqueeze(0)))
        return h_BTH, (h_1BH.squeeze(0), c_1BH.squeeze(0))

    # The masked/reset path steps token by token: one nn.LSTM call per token, on the
    # raw input (nn.LSTM projects it itself).
    def _project_inputs(self, x_BTI: Tensor) -> Tensor:
        return x_BTI

    def _step(self, x_BI: Tensor, state: State) -> State:
        return self._forward(x_BI.unsqueeze(1), state)[1]

    def extra_repr(self) -> str:
        return f"forget_bias={self.forget_bias}"
