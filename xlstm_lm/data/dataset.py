"""Token streams for language-model training: tokenize once, then sample windows.

The train and validation splits are each one 1-d token array: the documents'
tokens back to back, each document followed by the tokenizer's eos id (when it
has one). ``tokenize_splits`` caches both arrays in ``cache_dir`` under a hash of
the corpus and the tokenizer, so a resumed run does not tokenize again.

Training batches are windows of ``seq_len + 1`` tokens at uniformly random
offsets, drawn with a dedicated ``torch.Generator`` whose state goes into every
checkpoint (a resume continues the same sequence of windows). Validation uses
fixed, non-overlapping windows spread evenly over the validation split.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

import numpy as np
import torch

from .batch import token_dtype
from .corpus import DataError, Document, corpus_bytes, corpus_fingerprint
from .tokenizers import ByteTokenizer, Tokenizer

# Documents encoded per tokenizer call (bounds peak memory of the python id lists).
_ENCODE_BATCH_DOCS = 256


@dataclass
class TokenSplits:
    """Token ids of the two splits (1-d integer arrays) and the text size behind them."""

    train: np.ndarray
    val: np.ndarray
    train_bytes: int
    val_bytes: int
    from_cache: bool = False




def encode_documents(docs: list[Document], tokenizer: Tokenizer) -> np.ndarray:
    """All documents' tokens back to back, each followed by eos (if the tokenizer has one)."""
    dtype = token_dtype(tokenizer.vocab_size)
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    parts: list[np.ndarray] = []
    if isinstance(tokenizer, ByteTokenizer):
        for d in docs:
            parts += [tokenizer.encode_array(d.text), np.asarray(eos, dtype=np.uint8)]
    else:
        for i in range(0, len(docs), _ENCODE_BATCH_DOCS):
            chunk = docs[i : i + _ENCODE_BATCH_DOCS]
            for ids in tokenizer.encode_batch([d.text for d in chunk]):
                parts.append(np.asarray(ids + eos, dtype=dtype))
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


def tokenize_splits(
    train_docs: list[Document],
    val_docs: list[Document],
    tokenizer: Tokenizer,
    cache_dir: str | Path | None = None,
) -> TokenSplits:
    """Tokenize both splits, reusing ``cache_dir/tokens-<hash>.npz`` when it matches."""
    key = hashlib.sha256(
        "\n".join([corpus_fingerprint(train_docs), corpus_fingerprint(val_docs), tokenizer.fingerprint()]).encode()
    ).hexdigest()[:20]
    train_bytes, val_bytes = corpus_bytes(train_docs), corpus_bytes(val_docs)
    path = Path(cache_dir) / f"tokens-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path) as f:
            return TokenSplits(f["train"], f["val"], train_bytes, val_bytes, from_cache=True)
    splits = TokenSplits(encode_documents(train_docs, tokenizer), encode_documents(val_docs, tokenizer), train_bytes, val_bytes)
    for name, arr in (("training", splits.train), ("validation", splits.val)):
        if arr.size == 0:
            raise DataError(f"the {name} split tokenized to 0 tokens; the corpus needs more (non-blank) text")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, train=splits.train, val=splits.val)
        os.replace(tmp, path)
    return splits


def _need_more_data(split: str, have: int, window: int, split_bytes: int, fraction: float, knob: str) -> DataError:
    bytes_per_token = split_bytes / have if have else 1.0
    need_bytes = math.ceil(window * bytes_per_token / fraction)
    return DataError(
        f"the {split} split has {have} tokens but one window needs train.seq_len + 1 = {window}; "
        f"give at least ~{need_bytes} bytes of text in all, raise {knob}, or lower train.seq_len"
    )


class TrainWindows:
    """Random (B, seq_len + 1) windows of the train split from a seeded generator."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, text_bytes: int = 0, val_fraction: float = 0.05):
        if tokens.size < seq_len + 1:
            raise _need_more_data("training", int(tokens.size), seq_len + 1, text_bytes, 1 - val_fraction, "data.max_bytes")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = np.arange(seq_len + 1)

    def next_batch(self) -> torch.Tensor:
        """LongTensor (B, seq_len + 1); inputs are [:, :-1], targets [:, 1:]."""
        starts = torch.randint(0, self.tokens.size - self.seq_len, (self.batch_size,), generator=self.generator)
        idx = starts.numpy()[:, None] + self._offsets
        return torch.from_numpy(self.tokens[idx].astype(np.int64))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def val_windows(tokens: np.ndarray, seq_len: int, max_windows: int, text_bytes: int = 0, val_fraction: float = 0.05) -> torch.Tensor:
    """Up to ``max_windows`` non-overlapping (seq_len + 1)-token windows spread evenly over ``tokens``.

    Returns LongTensor (W, seq_len + 1). Raises DataError when not even one fits.
    """
    available = (tokens.size - 1) // seq_len
    if available < 1:
        raise _need_more_data("validation", int(tokens.size), seq_len + 1, text_bytes, val_fraction, "data.val_fraction")
    use = min(available, max_windows)
    picks = np.unique(np.linspace(0, available - 1, use).round().astype(np.int64))
    idx = picks[:, None] * seq_len + np.arange(seq_len + 1)
    return torch.from_numpy(tokens[idx].astype(np.int64))


def unigram_perplexity(train_tokens: np.ndarray, targets: np.ndarray, vocab_size: int) -> float:
    """Perplexity on ``targets`` of the add-one-smoothed unigram model of ``train_tokens``."""
    counts = np.bincount(train_tokens.astype(np.int64), minlength=vocab_size).astype(np.float64)
    log_probs = np.log(counts + 1.0) - np.log(counts.sum() + counts.size)
    return float(np.exp(-log_probs[np.asarray(targets, dtype=np.int64).ravel()].mean()))


def iter_batches(windows: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive batches of ``windows`` (the last one may be smaller)."""
    for i in range(0, windows.shape[0], batch_size):
        yield windows[i : i + batch_size]


__all__ = [
    "TokenSplits",
    "TrainWindows",
    "encode_documents",
    "iter_batches",
    "tokenize_splits",
    "unigram_perplexity",
    "val_windows",
]
