"""sLSTM layer of the xLSTM paper (Fig. 9): causal conv + SiLU feeding the input and
forget gates, head-wise gate projections, the sLSTM recurrence with block-diagonal
recurrent weights, per-head norm. State: ``(conv (B, K-1, D), h, c, n, m)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_lm_kernels.slstm import SLSTMState, slstm_recurrent

from ..config import SLSTMConfig
from .basic import CausalConv1d, HeadwiseLinear, small_init_
from .mlstm import resolve_kernel
from .norms import MultiHeadLayerNorm


class SLSTMLayer(nn.Module):
    def __init__(self, d_model: int, cfg: SLSTMConfig, dropout: float = 0.0, kernel: str = "auto"):
        super().__init__()
        self.cfg, self.d_model, self.kernel = cfg, d_model, kernel
        H = cfg.num_heads
        self.num_heads, self.head_dim = H, d_model // H
        self.conv = CausalConv1d(d_model, cfg.conv_kernel) if cfg.conv_kernel > 0 else None
        self.igate = HeadwiseLinear(d_model, d_model, H)
        self.fgate = HeadwiseLinear(d_model, d_model, H)
        self.zgate = HeadwiseLinear(d_model, d_model, H)
        self.ogate = HeadwiseLinear(d_model, d_model, H)
        # recurrent weights R[h, k_in, gate, d_out] and biases b[h, gate, d], gates (i, f, z, o)
        self.recurrent_kernel = nn.Parameter(torch.zeros(H, self.head_dim, 4, self.head_dim))
        self.bias = nn.Parameter(torch.zeros(H, 4, self.head_dim))
        self.out_norm = MultiHeadLayerNorm(H, self.head_dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self, block_idx: int, num_blocks: int) -> None:
        for g in (self.igate, self.fgate, self.zgate, self.ogate):
            small_init_(g.weight, self.d_model)
        H, Dh = self.num_heads, self.head_dim
        with torch.no_grad():
            if self.cfg.recurrent_weight_init == "zeros":
                self.recurrent_kernel.zero_()
            else:
                bound = self.d_model**-0.5
                self.recurrent_kernel.uniform_(-bound, bound)
            self.bias.zero_()
            if self.cfg.bias_init == "powerlaw_blockdependent":
                # Forget-gate biases spread over a power law, more long-memory units in
                # deeper blocks (xLSTM reference code).
                ratio = block_idx / (num_blocks - 1) if num_blocks > 1 else 0.0
                pos = torch.arange(Dh) / max(Dh - 1, 1)
                self.bias[:, 1, :] = -(-5.0 + 12.0 * pos ** (0.3 + 1.3 * ratio))
            elif self.cfg.bias_init == "small_init":
                self.bias[:, 1, :] = torch.linspace(3.0, 6.0, Dh)
            elif self.cfg.bias_init == "standard":
                bound = self.d_model**-0.5
                self.bias.uniform_(-bound, bound)
        self.out_norm.reset_parameters()

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
        B, T, D = x.shape
        conv_state, cell_state = (None, None) if state is None else (state[0], SLSTMState(*state[1:]))
        if self.conv is not None:
            x_in = x if mask is None else x * mask[..., None].to(x.dtype)
            x_conv, conv_state = self.conv(x_in, conv_state, reset)
            x_conv = F.silu(x_conv)
        else:
            x_conv, conv_state = x, x.new_zeros(B, 0, D)
        gates = torch.stack(
            [self.igate(x_conv), self.fgate(x_conv), self.zgate(x), self.ogate(x)], dim=2
        ).view(B, T, 4, self.num_heads, self.head_dim)
        if resolve_kernel(self.kernel, x) == "triton":
            # one fused launch for the whole sequence (or the fused decode step)
            if T == 1 and cell_state is not None and mask is None and not torch.is_grad_enabled():
                from xlstm_lm_kernels.slstm import slstm_step_triton

                cell_state = slstm_step_triton(
                    gates[:, 0],
                    cell_state,
                    self.recurrent_kernel,
                    self.bias,
                    self.cfg.forget_gate,
                    reset=None if reset is None else reset[:, 0],
                )
                y = cell_state.h[:, None].to(x.dtype)
            else:
                from xlstm_lm_kernels.slstm import slstm_triton

                y, cell_state = slstm_triton(
                    gates, self.recurrent_kernel, self.bias, cell_state, self.cfg.forget_gate, mask, reset
                )
        else:
            y, cell_state = slstm_recurrent(
                gates, self.recurrent_kernel, self.bias, cell_state, self.cfg.forget_gate, mask, reset
            )
        y = self.out_norm(self.dropout(y))  # (B, T, D)
        return y, (conv_state, *cell_state)
