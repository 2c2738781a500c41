"""Pre-tokenized, memory-mapped token shards with document boundaries, and the packed
row loader that training reads them with.

Layout of a shard folder (written once by ``tools/prepare_data.py``)::

    manifest.json            tokenizer kind/fingerprint, vocab, dtype, counts, shard list
    tokenizer/               the tokenizer (``load_tokenizer`` reads it)
    shard_00000.bin          raw tokens, uint16 when vocab < 65536 else uint32
    shard_00000.docs.npy     int64 offsets of every document start inside the shard

Documents never straddle shards. The loader sees all shards as one token stream,
cuts it into rows of ``seq_len + 1`` tokens (consecutive rows overlap by one token so
every token is a target once), shuffles the rows per epoch with a seeded permutation,
and gives rank r of W the rows ``[r*B, (r+1)*B)`` of each global batch of ``W*B``
rows: ranks are disjoint and the union is exactly the single-process batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .tokenizers import Tokenizer, load_tokenizer

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.uint32)


def write_shards(
    texts: Iterable[str],
    tokenizer: Tokenizer,
    out_dir: str | Path,
    shard_tokens: int = 1 << 24,
    append_eos: bool = True,
    source: str = "",
) -> dict:
    """Tokenize ``texts`` (one document each) into shards of about ``shard_tokens``
    tokens; returns the manifest (also written to ``out_dir/manifest.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    eos = tokenizer.eos_id if append_eos else None
    shards: list[dict] = []
    buf: list[np.ndarray] = []
    starts: list[int] = []
    fill = 0
    n_docs = n_tokens = 0

    def flush() -> None:
        nonlocal buf, starts, fill
        if not buf:
            return
        name = f"shard_{len(shards):05d}"
        np.concatenate(buf).astype(dtype).tofile(out / f"{name}.bin")
        np.save(out / f"{name}.docs.npy", np.asarray(starts, dtype=np.int64))
        shards.append({"name": name, "tokens": fill, "documents": len(starts)})
        buf, starts, fill = [], [], 0

    for text in texts:
        ids = tokenizer.encode(text)
        if eos is not None:
            ids = [*ids, eos]
        if not ids:
            continue
        if fill and fill + len(ids) > shard_tokens:
            flush()
        starts.append(fill)
        buf.append(np.asarray(ids, dtype=np.int64))
        fill += len(ids)
        n_docs += 1
        n_tokens += len(ids)
    flush()
    tokenizer.save(out / TOKENIZER_DIR)
    manifest = {
        "format": 1,
        "source": source,
        "tokenizer": {"kind": tokenizer.kind, "fingerprint": tokenizer.fingerprint(), "dir": TOKENIZER_DIR},
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype.name,
        "eos_appended": eos is not None,
        "documents": n_docs,
        "tokens": n_tokens,
        "shards": shards,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


@dataclass
class TokenShards:
    """All shards of a folder as one memory-mapped token stream with document starts."""

    root: Path
    manifest: dict
    tokens: list[np.ndarray]
    doc_starts: np.ndarray  # global offsets, (num_docs,)
    offsets: np.ndarray  # global offset of each shard, (num_shards + 1,)

    @classmethod
    def open(cls, root: str | Path) -> TokenShards:
        root = Path(root)
        path = root / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; create the shards with tools/prepare_data.py")
        manifest = json.loads(path.read_text())
        dtype = np.dtype(manifest["dtype"])
        tokens, starts, offsets = [], [], [0]
        for s in manifest["shards"]:
            tokens.append(np.memmap(root / f"{s['name']}.bin", dtype=dtype, mode="r"))
            starts.append(np.load(root / f"{s['name']}.docs.npy") + offsets[-1])
            offsets.append(offsets[-1] + s["tokens"])
        doc_starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        return cls(root, manifest, tokens, doc_starts, np.asarray(offsets, dtype=np.int64))

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.root / self.manifest["tokenizer"]["dir"])

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the global stream (may cross shards), as int64."""
        parts = []
        s = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            lo = start - self.offsets[s]
            hi = min(stop, self.offsets[s + 1]) - self.offsets[s]
            parts.append(np.asarray(self.tokens[s][lo:hi], dtype=np.int64))
            start = int(self.offsets[s] + hi)
            s += 1
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def starts_mask(self, start: int, stop: int) -> np.ndarray:
        """Bool ``(stop - start,)``: True where a document starts."""
        mask = np.zeros(stop - start, dtype=bool)
        lo, hi = np.searchsorted(self.doc_starts, [start, stop])
        mask[self.doc_starts[lo:hi] - start] = True
        return mask

    def documents(self) -> Iterator[np.ndarray]:
        """Every document's tokens, in order."""
        ends = np.append(self.doc_starts[1:], self.num_tokens)
        for a, b in zip(self.doc_starts, ends):
            yield self.slice(int(a), int(b))


@dataclass
class PackedBatch:
    """inputs/labels ``(B, T)`` long; reset ``(B, T)`` bool (True: token starts a document);
    rows ``(B,)``: the global row indices (row r holds tokens ``[r T, r T + T + 1)``)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    reset: torch.Tensor
    rows: np.ndarray


class PackedLoader:
    """Deterministic packed rows for rank ``rank`` of ``world_size``; its position
    (epoch, batch index) is ``state_dict()`` and goes into checkpoints."""

    def __init__(self, shards: TokenShards, seq_len: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must lie in [0, world_size={world_size})")
        self.shards, self.seq_len, self.batch_size, self.seed = shards, seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.num_rows = (shards.num_tokens - 1) // seq_len
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = self.num_rows // self.global_batch
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{shards.root} holds {shards.num_tokens} tokens = {self.num_rows} rows of seq_len {seq_len}, fewer "
                f"than one global batch of {self.global_batch} rows (batch_size x world_size); prepare more data "
                "or lower train.batch_size / train.seq_len"
            )
        self.epoch, self.index = 0, 0
        self._perm: np.ndarray | None = None

    def _permutation(self) -> np.ndarray:
        if self._perm is None:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)
        return self._perm

    def next_batch(self) -> PackedBatch:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index, self._perm = self.epoch + 1, 0, None
        g0 = self.index * self.global_batch + self.rank * self.batch_size
        rows = self._permutation()[g0 : g0 + self.batch_size]
        self.index += 1
        T = self.seq_len
        toks = np.stack([self.shards.slice(int(r) * T, int(r) * T + T + 1) for r in rows])
        starts = np.stack([self.shards.starts_mask(int(r) * T, int(r) * T + T + 1) for r in rows])
        inputs = torch.from_numpy(toks[:, :-1])
        labels = torch.from_numpy(toks[:, 1:].copy())
        # Each row starts from the empty state; the first token of the next document is
        # not predicted from the previous one (the model has just reset there).
        labels[torch.from_numpy(starts[:, 1:])] = -100
        return PackedBatch(inputs, labels, torch.from_numpy(starts[:, :-1].copy()), rows)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size", self.world_size) != self.world_size:
            raise ValueError(
                f"the checkpoint's loader ran on {state['world_size']} ranks, this run on {self.world_size}; "
                "resume with the same number of ranks"
            )
        self.epoch, self.index, self._perm = int(state["epoch"]), int(state["index"]), None
