"""Glue between the trainer and fine-tuning: SFT data, the loss of either batch kind.

Kept out of ``trainer.py`` so the training loop only gains a few calls:
``prepare_sft_data`` replaces the text-corpus pipeline when ``data.sft`` is set, and
``split_batch`` gives the model inputs of a text window batch ``(B, T + 1)`` or of a
``PackedBatch`` (SFT rows with loss masks and document resets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config_utils import ConfigError
from ..data.batch import PackedBatch
from ..data.sft import SFTData, load_sft_data
from ..data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from .checkpoint import TOKENIZER_DIR
from .config import RunConfig
from .init_from import InitSource, source_tokenizer_for


def split_batch(batch: torch.Tensor | PackedBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(inputs, labels, extra forward kwargs)`` of a window batch ``(B, T + 1)`` or of packed
    SFT rows (whose ``reset`` starts every example from a zero state)."""
    if isinstance(batch, PackedBatch):
        return batch.input_ids, batch.labels, {"reset": batch.reset}
    return batch[:, :-1], batch[:, 1:], {}


def run_tokenizer(cfg: RunConfig, run_dir: Path, ckpt: Path | None, init: InitSource | None) -> Tokenizer | None:
    """The tokenizer fixed by a checkpoint (resume) or an init source; None: build it from data.tokenizer."""
    if ckpt is not None:
        return load_tokenizer(ckpt / TOKENIZER_DIR)
    return source_tokenizer_for(init, cfg.data.tokenizer)


def prepare_sft_data(cfg: RunConfig, run_dir: Path, ckpt: Path | None, init: InitSource | None) -> SFTData:
    """Tokenizer (checkpoint's, source's, or built from data.tokenizer) + packed SFT splits."""
    tokenizer = run_tokenizer(cfg, run_dir, ckpt, init)
    if tokenizer is None:
        if cfg.data.tokenizer == "sentencepiece":
            raise ConfigError(
                "data.sft with data.tokenizer=sentencepiece needs --init-from a model with a sentencepiece tokenizer "
                "(SFT does not train a tokenizer); use 'byte' or a Hugging Face tokenizer otherwise"
            )
        tokenizer = build_tokenizer(cfg.data.tokenizer)
    if ckpt is None:
        tokenizer.save(run_dir / TOKENIZER_DIR)
    tc = cfg.train
    return load_sft_data(cfg.data.sft, tokenizer, tc.seq_len, tc.batch_size, tc.seed)


__all__ = ["split_batch", "prepare_sft_data", "run_tokenizer"]
