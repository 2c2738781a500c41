"""mLSTM layers: the xLSTM paper's pre-up-projection mLSTM and the xLSTM-7B mLSTM.

Both call the functional ops in ``xlstm_lm_kernels.mlstm``; the form is picked by
the config's ``backend`` field ('auto' = parallel for short inputs, chunkwise for
long ones, the step for single tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_lm_kernels.mlstm import MLSTMState, mlstm

from ..config import MLSTM7BConfig, MLSTMConfig
from ..extras import require
from .basic import CausalConv1d, HeadwiseLinear, small_init_, soft_cap, wang_init_
from .norms import MultiHeadLayerNorm


def mask_gates(i: torch.Tensor, f: torch.Tensor, mask: torch.Tensor | None):
    """Make masked-out tokens leave the memory untouched: input gate -inf (nothing
    written), forget gate +inf (log f = 0, nothing forgotten), so C, n and m pass
    through unchanged. i, f ``(B, H, T)``; mask ``(B, T)`` bool."""
    if mask is None:
        return i, f
    keep = mask[:, None, :]
    return i.masked_fill(~keep, float("-inf")), f.masked_fill(~keep, float("inf"))


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_kernel(kernel: str, x: torch.Tensor) -> str:
    """'auto' -> 'triton' for CUDA tensors when triton is installed, else 'torch'."""
    if kernel == "auto":
        return "triton" if x.is_cuda and triton_available() else "torch"
    if kernel == "triton":
        require("triton", "kernel_backend=triton")
    return kernel


def run_mlstm_cell(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    state: MLSTMState | None,
    backend: str,
    chunk_size: int,
    eps: float,
    kernel: str = "torch",
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """Dispatch to a cell form. q, k ``(B, H, T, Dqk)``, v ``(B, H, T, Dv)``, i, f ``(B, H, T)``.

    kernel 'triton': the Triton chunkwise kernels (with autograd), or the fused
    Triton decode step for single tokens without gradients. kernel 'torch': the
    reference form ``backend``, where 'auto' steps the recurrence for single tokens,
    uses the parallel form up to one chunk and the chunkwise form beyond.
    ``reset (B, T)`` bool: True where a token starts a new document (its entering
    state is discarded).
    """
    T = q.shape[2]
    if resolve_kernel(kernel, q) == "triton":
        if T == 1 and state is not None and reset is None and not torch.is_grad_enabled():
            from xlstm_lm_kernels.mlstm import mlstm_step_triton

            h, new = mlstm_step_triton(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state, eps)
            return h[:, :, None], new
        return mlstm(q, k, v, i, f, state, True, "triton", chunk_size, eps, reset=reset)
    if backend == "auto":
        backend = "recurrent" if T == 1 else "parallel" if T <= chunk_size else "chunkwise"
    return mlstm(q, k, v, i, f, state, True, backend, chunk_size, eps, reset=reset)


class MLSTMLayer(nn.Module):
    """The paper's mLSTM block body (Fig. 10): up-projection x2, causal conv + SiLU
    feeding q and k, head-wise q/k/v, mLSTM cell with per-head norm, learnable skip,
    output gate SiLU(z), down-projection.

    State: ``(conv (B, K-1, inner), C, n, m)``.
    """

    def __init__(
        self, d_model: int, inner: int, cfg: MLSTMConfig, bias: bool = False, dropout: float = 0.0, kernel: str = "auto"
    ):
        super().__init__()
        self.cfg, self.d_model, self.inner, self.kernel = cfg, d_model, inner, kernel
        self.num_heads = cfg.num_heads
        self.proj_up = nn.Linear(d_model, 2 * inner, bias=bias)
        nb = inner // cfg.qkv_blocksize
        self.q_proj = HeadwiseLinear(inner, inner, nb, bias=bias)
        self.k_proj = HeadwiseLinear(inner, inner, nb, bias=bias)
        self.v_proj = HeadwiseLinear(inner, inner, nb, bias=bias)
        self.conv = CausalConv1d(inner, cfg.conv_kernel) if cfg.conv_kernel > 0 else None
        self.igate = nn.Linear(3 * inner, cfg.num_heads)
        self.fgate = nn.Linear(3 * inner, cfg.num_heads)
        self.out_norm = MultiHeadLayerNorm(cfg.num_heads, inner // cfg.num_heads, eps=1e-5)
        self.learnable_skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self, num_blocks: int) -> None:
        d = self.d_model
        small_init_(self.proj_up.weight, d)
        wang_init_(self.proj_down.weight, d, num_blocks)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            small_init_(proj.weight, d)
        for lin in (self.proj_up, self.proj_down, self.q_proj, self.k_proj, self.v_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        nn.init.ones_(self.learnable_skip)
        self.out_norm.reset_parameters()
        # Gates start from their biases: forget gate open (linspace 3..6 over heads),
        # input gate near exp(0) = 1 with small noise (xLSTM reference code).
        nn.init.zeros_(self.fgate.weight)
        with torch.no_grad():
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, self.num_heads))
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, mean=0.0, std=0.1)

    def forward(
        self,
        x: torch.Tensor,
        state: tuple | None = None,
        mask: torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple]:
        """x ``(B, T, D)``; mask ``(B, T)`` bool marks real tokens (False = left padding,
        which leaves the state untouched); reset ``(B, T)`` bool marks tokens that start a
        new document (cell state and conv taps do not reach across it)."""
        B, T, _ = x.shape
        conv_state, cell_state = (None, None) if state is None else (state[0], MLSTMState(*state[1:]))
        x_mlstm, z = self.proj_up(x).split(self.inner, dim=-1)
        if mask is not None:
            # padding feeds zeros into the conv buffer: the same as the empty buffer
            x_mlstm = x_mlstm * mask[..., None].to(x_mlstm.dtype)
        if self.conv is not None:
            x_conv, conv_state = self.conv(x_mlstm, conv_state, reset)
            x_conv = F.silu(x_conv)
        else:
            x_conv, conv_state = F.silu(x_mlstm), x_mlstm.new_zeros(B, 0, self.inner)
        q, k, v = self.q_proj(x_conv), self.k_proj(x_conv), self.v_proj(x_mlstm)
        gate_in = torch.cat([q, k, v], dim=-1)
        i = self.igate(gate_in).transpose(1, 2)  # (B, H, T)
        f = self.fgate(gate_in).transpose(1, 2)
        i, f = mask_gates(i, f, mask)
        H = self.num_heads
        q, k, v = (t.view(B, T, H, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        h, cell_state = run_mlstm_cell(
            q, k, v, i, f, cell_state, self.cfg.backend, self.cfg.chunk_size, self.cfg.eps, self.kernel, reset
        )
        h = self.out_norm(h.transpose(1, 2))  # (B, T, inner)
        h = (h + self.learnable_skip * x_conv) * F.silu(z)
        y = self.dropout(self.proj_down(h))
        return y, (conv_state, *cell_state)


class MLSTM7BLayer(nn.Module):
    """The xLSTM-7B mLSTM layer: q/k/v/output-gate projections from the normed input,
    soft-capped input/forget gates, mLSTM cell, per-head LayerNorm, sigmoid output
    gate, output projection. State: ``(C, n, m)``."""

    def __init__(
        self,
        d_model: int,
        qk_dim: int,
        v_dim: int,
        cfg: MLSTM7BConfig,
        norm_eps: float,
        bias: bool = False,
        kernel: str = "auto",
    ):
        super().__init__()
        self.cfg, self.d_model, self.kernel = cfg, d_model, kernel
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(d_model, qk_dim, bias=bias)
        self.k = nn.Linear(d_model, qk_dim, bias=bias)
        self.v = nn.Linear(d_model, v_dim, bias=bias)
        self.ogate = nn.Linear(d_model, v_dim, bias=bias)
        self.igate = nn.Linear(d_model, cfg.num_heads, bias=True)
        self.fgate = nn.Linear(d_model, cfg.num_heads, bias=True)
        self.out_norm = MultiHeadLayerNorm(cfg.num_heads, v_dim // cfg.num_heads, eps=norm_eps, bias=bias)
        self.out_proj = nn.Linear(v_dim, d_model, bias=bias)

    def reset_parameters(self, num_blocks: int) -> None:
        d = self.d_model
        for lin in (self.q, self.k, self.v, self.ogate, self.igate, self.fgate):
            small_init_(lin.weight, d)
        wang_init_(self.out_proj.weight, d, num_blocks)
        for lin in (self.q, self.k, self.v, self.ogate, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        self.out_norm.reset_parameters()
        with torch.no_grad():
            # xLSTM-7B: input gate bias -10 keeps early updates small; forget gates open.
            self.igate.bias.fill_(self.cfg.igate_bias_init)
            self.fgate.bias.copy_(torch.linspace(*self.cfg.fgate_bias_init, self.num_heads))

    def forward(
        self,
        x: torch.Tensor,
        state: tuple | None = None,
        mask: torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple]:
        B, T, _ = x.shape
        H = self.num_heads
        q, k, v = (t.view(B, T, H, -1).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x)))
        i = soft_cap(self.igate(x), self.cfg.gate_soft_cap).transpose(1, 2)
        f = soft_cap(self.fgate(x), self.cfg.gate_soft_cap).transpose(1, 2)
        i, f = mask_gates(i, f, mask)
        cell_state = None if state is None else MLSTMState(*state)
        h, cell_state = run_mlstm_cell(
            q, k, v, i, f, cell_state, self.cfg.backend, self.cfg.chunk_size, self.cfg.eps, self.kernel, reset
        )
        h = self.out_norm(h.transpose(1, 2))  # (B, T, v_dim)
        y = self.out_proj(torch.sigmoid(self.ogate(x)) * h)
        return y, tuple(cell_state)
