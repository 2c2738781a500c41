"""The one batch type every data source yields, and the one token storage rule.

Text windows, token shards and SFT rows all reach a training loop as ``PackedBatch``:
``input_ids`` and aligned ``labels`` (``labels[:, t]`` is the target of position ``t``;
-100 = not trained) and ``reset`` (True where a document or example starts: the
model discards its state there), all ``(B, T)``. Sources keep their position in their
own ``state_dict()`` for an exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PackedBatch:
    """Packed rows, all ``(B, T)``: ``input_ids`` (long), ``labels`` (long, aligned,
    -100 = not trained), ``reset`` (bool, True where a document starts). ``rows``: the
    source's global row indices ``(B,)`` where it has them (token shards), else None."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    reset: torch.Tensor
    rows: np.ndarray | None = None

    @property
    def shape(self) -> torch.Size:
        return self.input_ids.shape

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.labels.to(device), self.reset.to(device), self.rows)

    def __getitem__(self, index) -> PackedBatch:
        rows = None if self.rows is None else self.rows[index.numpy() if torch.is_tensor(index) else index]
        return PackedBatch(self.input_ids[index], self.labels[index], self.reset[index], rows)


def token_dtype(vocab_size: int) -> np.dtype:
    """How token ids are stored (tokenized caches, shards): uint16 while every id fits
    (vocab_size <= 65,536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


__all__ = ["PackedBatch", "token_dtype"]
