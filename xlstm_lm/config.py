"""Model configuration: one typed, validated dataclass tree for every backbone.

A model is a residual stack of ``num_blocks`` blocks. Which block sits where is
given by ``pattern`` (one letter per block, see ``BLOCK_LETTERS``) or, for the
paper's xLSTM[a:b] notation, by ``block`` (the default kind) plus ``slstm_at``
(indices of sLSTM blocks). Everything derived (per-block kinds, projection sizes)
is computed here, never patched into children.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from .config_utils import ConfigError, check

BlockKind = Literal[
    "mlstm", "slstm", "mlstm7b", "attention", "elman", "lstm1997", "lstm", "peephole", "gru", "cudnn_lstm"
]

#: One letter per block kind for ``ModelConfig.pattern`` (e.g. "mmms" = xLSTM[3:1]).
BLOCK_LETTERS: dict[str, str] = {
    "m": "mlstm",
    "s": "slstm",
    "x": "mlstm7b",
    "a": "attention",
    "e": "elman",
    "h": "lstm1997",
    "l": "lstm",
    "p": "peephole",
    "g": "gru",
    "c": "cudnn_lstm",
}

CLASSIC_KINDS = ("elman", "lstm1997", "lstm", "peephole", "gru", "cudnn_lstm")

MLSTMBackend = Literal["auto", "parallel", "chunkwise", "recurrent"]


def round_up(x: float, multiple: int) -> int:
    """Round ``x`` up to the next multiple of ``multiple``: the paper blocks' rule
    (``xlstm.utils.UpProjConfigMixin._set_proj_up_dim``, which ``xLSTMLMModel``'s mLSTM
    layer and sLSTM feed-forward use), where a fractional ``x`` counts as a remainder."""
    return int(math.ceil(x / multiple) * multiple)


def round_up_7b(x: float, multiple: int) -> int:
    """The xLSTM-7B rule for the SwiGLU width, written exactly as
    ``xlstm.xlstm_large.utils.round_up_to_next_multiple_of`` and transformers'
    ``xLSTMFeedForward`` compute it on the float product ``x``.

    Floor-dividing ``x + multiple - 1`` drops the fraction of ``x`` first, so this is
    ``round_up(int(x), multiple)``, not ``round_up(x, multiple)``: d_model 384 x 2.667
    = 1024.128 gives 1024 here but 1088 under the paper rule. Checkpoints in the
    reference and the built-in transformers format are sized by this rule.
    """
    return int(((x + multiple - 1) // multiple) * multiple)


@dataclass
class MLSTMConfig:
    """mLSTM block of the xLSTM paper (pre-up-projection, Fig. 10)."""

    num_heads: int = 4
    """Heads of the mLSTM cell; the inner dimension is split evenly among them."""
    proj_factor: float = 2.0
    """Up-projection factor of the block (inner dim = proj_factor * d_model, rounded up)."""
    round_to: int = 64
    """The inner dimension is rounded up to a multiple of this."""
    conv_kernel: int = 4
    """Causal depthwise convolution width feeding q and k (0 disables it)."""
    qkv_blocksize: int = 4
    """Block size of the block-diagonal (head-wise) q/k/v projections."""
    chunk_size: int = 64
    """Chunk size of the chunkwise-parallel form."""
    backend: MLSTMBackend = "auto"
    """Cell form: 'parallel' (quadratic), 'chunkwise', 'recurrent' (step loop), or 'auto'."""
    eps: float = 1e-6
    """Added to the normaliser max(|n.q|, exp(-m)) before dividing."""

    def __post_init__(self):
        check(self.num_heads > 0, f"mlstm.num_heads must be positive, got {self.num_heads}")
        check(self.proj_factor > 0, f"mlstm.proj_factor must be positive, got {self.proj_factor}")
        check(self.conv_kernel >= 0, f"mlstm.conv_kernel must be >= 0, got {self.conv_kernel}")
        check(self.chunk_size > 0, f"mlstm.chunk_size must be positive, got {self.chunk_size}")
        check(self.qkv_blocksize > 0, f"mlstm.qkv_blocksize must be positive, got {self.qkv_blocksize}")


@dataclass
class SLSTMConfig:
    """sLSTM block of the xLSTM paper (post-up-projection, Fig. 9)."""

    num_heads: int = 4
    """Heads; recurrent weights are block-diagonal with one block per head."""
    conv_kernel: int = 4
    """Causal conv width feeding the input and forget gates (0 disables it)."""
    forget_gate: Literal["sigmoid", "exp"] = "sigmoid"
    """Forget-gate activation: sigmoid (paper default) or exponential."""
    bias_init: Literal["powerlaw_blockdependent", "small_init", "standard", "zeros"] = (
        "powerlaw_blockdependent"
    )
    """Gate-bias initialisation; the paper's power-law forget-gate bias by default."""
    recurrent_weight_init: Literal["zeros", "standard"] = "zeros"
    """Recurrent weight initialisation."""
    ffn_proj_factor: float = 1.3
    """Gated-MLP up-projection factor (paper: 4/3; the reference code uses 1.3)."""
    ffn_act: Literal["gelu", "swish", "relu"] = "gelu"
    """Gated-MLP activation."""
    round_to: int = 64
    """The MLP inner dimension is rounded up to a multiple of this."""

    def __post_init__(self):
        check(self.num_heads > 0, f"slstm.num_heads must be positive, got {self.num_heads}")
        check(self.conv_kernel >= 0, f"slstm.conv_kernel must be >= 0, got {self.conv_kernel}")
        check(self.ffn_proj_factor > 0, "slstm.ffn_proj_factor must be positive")


@dataclass
class MLSTM7BConfig:
    """xLSTM-7B block: RMSNorm, mLSTM with soft-capped gates and output gate, SwiGLU."""

    num_heads: int = 8
    """Heads of the mLSTM cell."""
    qk_dim_factor: float = 0.5
    """q/k dimension = qk_dim_factor * d_model."""
    v_dim_factor: float = 1.0
    """v dimension = v_dim_factor * d_model."""
    gate_soft_cap: float | None = 15.0
    """Soft cap c * tanh(x / c) on input/forget gate pre-activations (None disables)."""
    ffn_proj_factor: float = 2.667
    """SwiGLU inner dimension factor."""
    ffn_round_to: int = 64
    """SwiGLU inner dimension: int(ffn_proj_factor * d_model) rounded up to a multiple of
    this (the fraction is dropped before rounding, as in xLSTM-7B; see ``round_up_7b``)."""
    igate_bias_init: float = -10.0
    """Input-gate bias initialisation (xLSTM-7B: -10)."""
    fgate_bias_init: tuple[float, float] = (3.0, 6.0)
    """Forget-gate bias initialised as linspace(start, end) over heads."""
    chunk_size: int = 64
    """Chunk size of the chunkwise-parallel form."""
    backend: MLSTMBackend = "auto"
    """Cell form, as for the paper's mLSTM block."""
    eps: float = 1e-6
    """Normaliser epsilon of the cell."""

    def __post_init__(self):
        check(self.num_heads > 0, f"mlstm7b.num_heads must be positive, got {self.num_heads}")
        check(self.qk_dim_factor > 0 and self.v_dim_factor > 0, "mlstm7b dim factors must be positive")
        check(self.chunk_size > 0, f"mlstm7b.chunk_size must be positive, got {self.chunk_size}")


@dataclass
class AttentionConfig:
    """Llama decoder block: RMSNorm pre-norm, causal attention with rotary position
    embeddings and optional grouped-query heads, SwiGLU MLP (``pattern`` letter a)."""

    num_heads: int = 4
    """Query heads; the head dimension is d_model / num_heads."""
    num_kv_heads: int | None = None
    """Key/value heads (grouped-query attention: num_heads / num_kv_heads query heads
    share one); None gives one per query head (multi-head attention)."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding frequencies (Llama 1/2: 10000)."""
    ffn_proj_factor: float = 8 / 3
    """SwiGLU inner dimension factor (Llama: 2/3 of a 4x MLP)."""
    ffn_round_to: int = 256
    """SwiGLU inner dimension: int(ffn_proj_factor * d_model) rounded up to a multiple of
    this (Llama's ``multiple_of``, which drops the fraction first like ``round_up_7b``)."""

    def __post_init__(self):
        check(self.num_heads > 0, f"attention.num_heads must be positive, got {self.num_heads}")
        check(
            self.num_kv_heads is None or self.num_kv_heads > 0,
            f"attention.num_kv_heads must be positive (or null for one per query head), got {self.num_kv_heads}",
        )
        check(self.rope_theta > 0, f"attention.rope_theta must be positive, got {self.rope_theta}")
        check(self.ffn_proj_factor > 0, f"attention.ffn_proj_factor must be positive, got {self.ffn_proj_factor}")
        check(self.ffn_round_to > 0, f"attention.ffn_round_to must be positive, got {self.ffn_round_to}")


@dataclass
class ClassicConfig:
    """Classic recurrent blocks (Elman, LSTM-1997, LSTM, peephole, GRU, nn.LSTM)."""

    residual: bool = True
    """Pre-norm residual block (x + cell(norm(x))); False gives the plain stacked RNN
    of Zaremba et al. (cell output feeds the next layer directly)."""
    dropout: float = 0.0
    """Dropout on each layer's output (non-recurrent connections, as in Zaremba et al.)."""


@dataclass
class ModelConfig:
    """A language model: embedding, residual block stack, final norm, LM head."""

    vocab_size: int = 256
    """Vocabulary size (must match the tokenizer)."""
    d_model: int = 128
    """Embedding / residual stream width."""
    num_blocks: int = 2
    """Number of blocks in the stack."""
    block: BlockKind = "mlstm"
    """Kind of every block not named by slstm_at (ignored when pattern is set)."""
    slstm_at: list[int] | Literal["all"] = field(default_factory=list)
    """Indices of sLSTM blocks (xLSTM[a:b] notation), or 'all'."""
    pattern: str | None = None
    """One letter per block, overriding block/slstm_at: m=mLSTM, s=sLSTM, x=xLSTM-7B,
    a=attention (Llama), e=Elman, h=LSTM-1997, l=LSTM, p=peephole LSTM, g=GRU, c=cuDNN nn.LSTM."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    """Norm type of block pre-norms and the final norm (the 7B and Llama layouts use rmsnorm)."""
    norm_eps: float = 1e-5
    """Epsilon of those norms."""
    final_norm: bool = True
    """Apply a norm after the last block."""
    tie_embeddings: bool = False
    """Share the embedding matrix with the LM head."""
    bias: bool = False
    """Biases in the linear projections of the blocks."""
    dropout: float = 0.0
    """Dropout on block outputs (and the embedding, if embedding_dropout)."""
    embedding_dropout: bool = False
    """Apply dropout to the embedding output."""
    logit_soft_cap: float | None = None
    """Soft cap c * tanh(logits / c) on the output logits (xLSTM-7B: 30)."""
    kernel_backend: Literal["auto", "triton", "torch"] = "auto"
    """Cell kernels: 'triton' (fused Triton kernels), 'torch' (the PyTorch reference
    forms chosen by mlstm.backend), or 'auto' (Triton on CUDA tensors when triton is
    installed, the references elsewhere)."""
    init: Literal["xlstm", "torch"] = "xlstm"
    """Initialisation: the papers' (small_init / wang_init / gate biases) or torch defaults."""
    mlstm: MLSTMConfig = field(default_factory=MLSTMConfig)
    """Settings of paper mLSTM blocks."""
    slstm: SLSTMConfig = field(default_factory=SLSTMConfig)
    """Settings of sLSTM blocks."""
    mlstm7b: MLSTM7BConfig = field(default_factory=MLSTM7BConfig)
    """Settings of xLSTM-7B blocks."""
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    """Settings of attention (Llama) blocks."""
    classic: ClassicConfig = field(default_factory=ClassicConfig)
    """Settings of classic recurrent blocks."""

    def __post_init__(self):
        check(self.vocab_size > 0, f"model.vocab_size must be positive, got {self.vocab_size}")
        check(self.d_model > 0, f"model.d_model must be positive, got {self.d_model}")
        check(self.num_blocks > 0, f"model.num_blocks must be positive, got {self.num_blocks}")
        check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.pattern is not None:
            bad = sorted(set(self.pattern) - set(BLOCK_LETTERS))
            check(
                not bad,
                f"model.pattern has unknown letter(s) {bad}; use {', '.join(f'{k}={v}' for k, v in BLOCK_LETTERS.items())}",
            )
            check(
                len(self.pattern) == self.num_blocks,
                f"model.pattern {self.pattern!r} has {len(self.pattern)} letters but num_blocks={self.num_blocks}; "
                "give one letter per block",
            )
        elif self.slstm_at != "all":
            for idx in self.slstm_at:
                check(
                    0 <= idx < self.num_blocks,
                    f"model.slstm_at index {idx} is outside 0..{self.num_blocks - 1} (num_blocks={self.num_blocks})",
                )
        kinds = self.block_kinds
        for kind in set(kinds):
            if kind == "mlstm":
                inner = self.mlstm_inner_dim
                check(
                    inner % self.mlstm.num_heads == 0,
                    f"mLSTM inner dim {inner} is not divisible by mlstm.num_heads={self.mlstm.num_heads}",
                )
                check(
                    inner % self.mlstm.qkv_blocksize == 0,
                    f"mLSTM inner dim {inner} is not divisible by mlstm.qkv_blocksize={self.mlstm.qkv_blocksize}",
                )
            elif kind == "slstm":
                check(
                    self.d_model % self.slstm.num_heads == 0,
                    f"model.d_model={self.d_model} is not divisible by slstm.num_heads={self.slstm.num_heads}",
                )
            elif kind == "mlstm7b":
                h = self.mlstm7b.num_heads
                check(
                    self.mlstm7b_qk_dim % h == 0 and self.mlstm7b_v_dim % h == 0,
                    f"xLSTM-7B q/k dim {self.mlstm7b_qk_dim} and v dim {self.mlstm7b_v_dim} must be divisible "
                    f"by mlstm7b.num_heads={h}",
                )
            elif kind == "attention":
                h, kv = self.attention.num_heads, self.attention_kv_heads
                check(
                    self.d_model % h == 0,
                    f"model.d_model={self.d_model} is not divisible by attention.num_heads={h}; "
                    "choose a head count that divides d_model",
                )
                check(
                    self.attention_head_dim % 2 == 0,
                    f"attention head dim {self.attention_head_dim} (d_model / attention.num_heads) must be even: "
                    "rotary embeddings rotate pairs of features; change attention.num_heads",
                )
                check(
                    h % kv == 0,
                    f"attention.num_heads={h} is not a multiple of attention.num_kv_heads={kv}; grouped-query "
                    "heads share key/value heads evenly, so choose num_kv_heads dividing num_heads",
                )

    @property
    def block_kinds(self) -> list[str]:
        """The kind of every block, in order."""
        if self.pattern is not None:
            return [BLOCK_LETTERS[c] for c in self.pattern]
        slstm = range(self.num_blocks) if self.slstm_at == "all" else set(self.slstm_at)
        return ["slstm" if i in slstm else self.block for i in range(self.num_blocks)]

    @property
    def mlstm_inner_dim(self) -> int:
        return round_up(self.mlstm.proj_factor * self.d_model, self.mlstm.round_to)

    @property
    def slstm_ffn_dim(self) -> int:
        return round_up(self.slstm.ffn_proj_factor * self.d_model, self.slstm.round_to)

    @property
    def mlstm7b_qk_dim(self) -> int:
        return int(self.d_model * self.mlstm7b.qk_dim_factor)

    @property
    def mlstm7b_v_dim(self) -> int:
        return int(self.d_model * self.mlstm7b.v_dim_factor)

    @property
    def mlstm7b_ffn_dim(self) -> int:
        return round_up_7b(self.d_model * self.mlstm7b.ffn_proj_factor, self.mlstm7b.ffn_round_to)

    @property
    def attention_head_dim(self) -> int:
        return self.d_model // self.attention.num_heads

    @property
    def attention_kv_heads(self) -> int:
        return self.attention.num_kv_heads or self.attention.num_heads

    @property
    def attention_ffn_dim(self) -> int:
        return round_up_7b(self.d_model * self.attention.ffn_proj_factor, self.attention.ffn_round_to)


__all__ = [
    "AttentionConfig",
    "BLOCK_LETTERS",
    "CLASSIC_KINDS",
    "ClassicConfig",
    "ConfigError",
    "MLSTM7BConfig",
    "MLSTMConfig",
    "ModelConfig",
    "SLSTMConfig",
    "round_up",
    "round_up_7b",
]
