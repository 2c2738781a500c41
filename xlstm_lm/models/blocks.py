"""Residual blocks: every block maps ``(x (B, T, D), state) -> (x', state')``.

- ``MLSTMBlock``:   x + mLSTM(norm(x))                           (paper, Fig. 10)
- ``SLSTMBlock``:   x + sLSTM(norm(x)); x + GatedMLP(norm(x))    (paper, Fig. 9)
- ``MLSTM7BBlock``: x + mLSTM7B(rmsnorm(x)); x + SwiGLU(rmsnorm(x))
- ``AttentionBlock``: x + Attention(rmsnorm(x)); x + SwiGLU(rmsnorm(x))   (Llama)
- ``ClassicBlock``: x + RNN(norm(x)), or the plain stacked RNN (no norm, no residual)

A block's state is a flat tuple of tensors with the batch as dim 0 (see each layer;
for attention it is the key/value cache, which grows); ``None`` is the empty state.
``mask (B, T)`` marks real tokens; masked (left-padding) tokens leave the state untouched.
``reset (B, T)`` marks tokens that start a new document; nothing before them reaches them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..layers.attention import AttentionLayer
from ..layers.basic import GatedFFN
from ..layers.mlstm import MLSTM7BLayer, MLSTMLayer
from ..layers.norms import make_norm
from ..layers.slstm import SLSTMLayer


class MLSTMBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, idx: int):
        super().__init__()
        self.idx, self.num_blocks = idx, cfg.num_blocks
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mlstm = MLSTMLayer(
            cfg.d_model, cfg.mlstm_inner_dim, cfg.mlstm, cfg.bias, cfg.dropout, cfg.kernel_backend
        )

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.mlstm.reset_parameters(self.num_blocks)

    def forward(self, x, state=None, mask=None, reset=None):
        y, state = self.mlstm(self.norm(x), state, mask, reset)
        return x + y, state


class SLSTMBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, idx: int):
        super().__init__()
        self.idx, self.num_blocks, self.d_model = idx, cfg.num_blocks, cfg.d_model
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.slstm = SLSTMLayer(cfg.d_model, cfg.slstm, cfg.dropout, cfg.kernel_backend)
        self.ffn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.ffn = GatedFFN(cfg.d_model, cfg.slstm_ffn_dim, cfg.slstm.ffn_act, cfg.bias, cfg.dropout)

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.ffn_norm.reset_parameters()
        self.slstm.reset_parameters(self.idx, self.num_blocks)
        self.ffn.reset_parameters(self.d_model, self.num_blocks)

    def forward(self, x, state=None, mask=None, reset=None):
        y, state = self.slstm(self.norm(x), state, mask, reset)
        x = x + y
        return x + self.ffn(self.ffn_norm(x)), state


class MLSTM7BBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, idx: int):
        super().__init__()
        self.idx, self.num_blocks, self.d_model = idx, cfg.num_blocks, cfg.d_model
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mlstm = MLSTM7BLayer(
            cfg.d_model, cfg.mlstm7b_qk_dim, cfg.mlstm7b_v_dim, cfg.mlstm7b, cfg.norm_eps, cfg.bias, cfg.kernel_backend
        )
        self.ffn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.ffn = GatedFFN(cfg.d_model, cfg.mlstm7b_ffn_dim, "swish", cfg.bias, cfg.dropout)

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.ffn_norm.reset_parameters()
        self.mlstm.reset_parameters(self.num_blocks)
        self.ffn.reset_parameters(self.d_model, self.num_blocks)

    def forward(self, x, state=None, mask=None, reset=None):
        y, state = self.mlstm(self.norm(x), state, mask, reset)
        x = x + y
        return x + self.ffn(self.ffn_norm(x)), state


class AttentionBlock(nn.Module):
    """The Llama decoder block. The norms are ``model.norm`` like every block's (the
    Llama configs set rmsnorm); the SwiGLU width is ``ModelConfig.attention_ffn_dim``."""

    def __init__(self, cfg: ModelConfig, idx: int):
        super().__init__()
        self.idx, self.num_blocks, self.d_model = idx, cfg.num_blocks, cfg.d_model
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        att = cfg.attention
        self.attention = AttentionLayer(
            cfg.d_model, att.num_heads, cfg.attention_kv_heads, att.rope_theta, cfg.bias, cfg.dropout
        )
        self.ffn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.ffn = GatedFFN(cfg.d_model, cfg.attention_ffn_dim, "swish", cfg.bias, cfg.dropout)

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.ffn_norm.reset_parameters()
        self.attention.reset_parameters(self.num_blocks)
        self.ffn.reset_parameters(self.d_model, self.num_blocks)

    def forward(self, x, state=None, mask=None, reset=None):
        y, state = self.attention(self.norm(x), state, mask, reset)
        x = x + y
        return x + self.ffn(self.ffn_norm(x)), state


class ClassicBlock(nn.Module):
    """A classic recurrent layer as a block: pre-norm residual, or (residual=False)
    the plain stacked RNN of Zaremba et al. where the layer output is the next input."""

    def __init__(self, cfg: ModelConfig, idx: int, kind: str):
        super().__init__()
        from ..layers import classic

        cells = {
            "elman": classic.ElmanRNN,
            "lstm1997": classic.LSTM1997,
            "lstm": classic.LSTMForget,
            "peephole": classic.PeepholeLSTM,
            "gru": classic.GRU,
            "cudnn_lstm": classic.CuDNNLSTM,
        }
        self.kind, self.residual = kind, cfg.classic.residual
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if self.residual else nn.Identity()
        self.cell = cells[kind](cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.classic.dropout)

    def reset_parameters(self) -> None:
        if self.residual:
            self.norm.reset_parameters()
        self.cell.reset_parameters()

    def forward(self, x, state=None, mask=None, reset=None):
        y, state = self.cell(self.norm(x), state, mask, reset)
        y = self.dropout(y)
        return (x + y if self.residual else y), tuple(state)


def build_block(cfg: ModelConfig, idx: int, kind: str) -> nn.Module:
    if kind == "mlstm":
        return MLSTMBlock(cfg, idx)
    if kind == "slstm":
        return SLSTMBlock(cfg, idx)
    if kind == "mlstm7b":
        return MLSTM7BBlock(cfg, idx)
    if kind == "attention":
        return AttentionBlock(cfg, idx)
    return ClassicBlock(cfg, idx, kind)
