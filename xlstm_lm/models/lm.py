"""The language model: embedding -> residual block stack -> final norm -> LM head.

Every backbone (xLSTM[a:b] mixes, the xLSTM-7B layout, the classic LSTM family,
Llama and hybrids with attention blocks) is this one class with a different
``ModelConfig``. ``forward`` takes and returns the state (recurrent states, and the
key/value cache of attention blocks), so a long text can be processed piece by piece
and generation steps one token at a time (with constant memory when no block is
attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..extras import require
from ..layers.basic import small_init_, soft_cap
from ..layers.norms import make_norm
from .blocks import AttentionBlock, MLSTM7BBlock, MLSTMBlock, SLSTMBlock, build_block

State = list[tuple[torch.Tensor, ...]]


@dataclass
class LMOutput:
    """logits ``(B, T, V)``; loss (mean CE over labels != -100) or None; state per block."""

    logits: torch.Tensor
    loss: torch.Tensor | None
    state: State

    def __iter__(self):
        """``logits, state = model(ids)`` unpacks like a (logits, new_state) pair."""
        return iter((self.logits, self.state))


class XLSTMLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.kernel_backend == "triton":
            # before anything runs: a run asking for Triton stops here, not at its first step
            require("triton", "model.kernel_backend=triton")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.emb_dropout = nn.Dropout(config.dropout) if config.embedding_dropout else nn.Identity()
        self.blocks = nn.ModuleList(build_block(config, i, kind) for i, kind in enumerate(config.block_kinds))
        self.final_norm = make_norm(config.norm, config.d_model, config.norm_eps) if config.final_norm else nn.Identity()
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as in the papers (config.init='xlstm') or with torch defaults."""
        if self.config.init == "torch":
            return
        small_init_(self.embedding.weight, self.config.d_model)
        if not self.config.tie_embeddings:
            small_init_(self.lm_head.weight, self.config.d_model)
        for block in self.blocks:
            block.reset_parameters()
        if isinstance(self.final_norm, nn.Module) and hasattr(self.final_norm, "reset_parameters"):
            self.final_norm.reset_parameters()

    def forward(
        self,
        input_ids: torch.Tensor,
        state: State | None = None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
    ) -> LMOutput:
        """Run the model on ``input_ids (B, T)``, continuing from ``state`` if given.

        ``labels (B, T)`` are aligned with the inputs (labels[:, t] is the target of
        position t; the caller shifts); -100 is ignored. ``attention_mask (B, T)``
        (1 = token, 0 = padding) makes padding tokens leave every recurrent state
        untouched (attention neither attends to them nor counts them in positions), so
        a left-padded batch continues exactly like each row alone (padding must come
        before a row's tokens; the conv buffers take it as zeros).
        ``reset (B, T)`` bool marks tokens that start a new document (packed training
        rows): every block discards its state before them, no causal-conv tap or
        attention reaches across them and rotary positions restart there, so a packed
        row gives each document's logits as if run alone.
        """
        self._check_inputs(input_ids, state, labels)
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}"
                )
            mask = attention_mask.bool()
        if reset is not None:
            if reset.shape != input_ids.shape:
                raise ValueError(f"reset {tuple(reset.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")
            reset = reset.bool()
        x = self.emb_dropout(self.embedding(input_ids))
        new_state: State = []
        for b, block in enumerate(self.blocks):
            x, s = block(x, None if state is None else state[b], mask, reset)
            new_state.append(s)
        logits = soft_cap(self.lm_head(self.final_norm(x)), self.config.logit_soft_cap)
        loss = None
        if labels is not None:
            # cross-entropy in at least float32 (bf16 logits lose the small probabilities)
            flat = logits.reshape(-1, logits.shape[-1])
            flat = flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat
            loss = F.cross_entropy(flat, labels.reshape(-1), ignore_index=-100)
        return LMOutput(logits, loss, new_state)

    def _check_inputs(self, input_ids, state, labels) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an integer tensor (torch.long), got {input_ids.dtype}")
        if input_ids.numel() and (int(input_ids.max()) >= self.config.vocab_size or int(input_ids.min()) < 0):
            raise ValueError(
                f"token ids must lie in [0, {self.config.vocab_size}), got range "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]; the tokenizer and model.vocab_size disagree"
            )
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} entries but the model has {len(self.blocks)} blocks")
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Number of parameters (tied weights counted once)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.embedding.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward).

        Dense part: 2 FLOPs per weight of every matrix (all parameters with >= 2 dims
        except the embedding lookup; the LM head counts even when tied). Cell part:
        the mLSTM's per-token state update and readout (4 Dqk Dv per head) plus the
        intra-chunk attention-like term ((Dqk + Dv) L per head, causal half of 2 L).
        Attention blocks: QK^T and AV, 2 FLOPs per multiply-add, over the causal half
        (a token attends to seq_len / 2 positions on average), so 2 Dh seq_len per
        query head: the mLSTM term with L = seq_len. (PaLM's 6N + 12 n_layer H Dh T counts
        the full T x T square, twice this.) Grouped-query heads save no attention FLOPs.
        """
        dense = sum(p.numel() for n, p in self.named_parameters() if p.dim() >= 2 and not n.startswith("embedding."))
        if self.config.tie_embeddings:
            dense += self.lm_head.weight.numel()
        cell = 0.0
        for block in self.blocks:
            if isinstance(block, (MLSTMBlock, MLSTM7BBlock)):
                layer = block.mlstm
                H = layer.num_heads
                if isinstance(block, MLSTMBlock):
                    dqk = dv = layer.inner // H
                    chunk = layer.cfg.chunk_size
                else:
                    dqk, dv = layer.q.out_features // H, layer.v.out_features // H
                    chunk = layer.cfg.chunk_size
                L = min(chunk, seq_len)
                cell += H * (4 * dqk * dv + (dqk + dv) * L)
            elif isinstance(block, SLSTMBlock):
                cell += 30 * block.d_model  # pointwise gating per unit
            elif isinstance(block, AttentionBlock):
                layer = block.attention
                cell += layer.num_heads * 2 * layer.head_dim * seq_len
        return 3.0 * (2.0 * dense + cell)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample a continuation: one prefill pass, then one token at a time on the
        carried state. temperature=0 is greedy. Returns ``(B, T + max_new_tokens)``."""
        if input_ids.shape[1] == 0:
            raise ValueError("generate needs at least one prompt token")
        out = self(input_ids)
        tokens = [input_ids]
        logits, state = out.logits[:, -1], out.state
        for step in range(max_new_tokens):
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                scaled = logits.float() / temperature
                if top_k is not None:
                    kth = torch.topk(scaled, min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                probs = torch.softmax(scaled, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            tokens.append(nxt)
            if step + 1 < max_new_tokens:
                out = self(nxt, state)
                logits, state = out.logits[:, -1], out.state
        return torch.cat(tokens, dim=1)
