"""Text sources read through ``datasets``; pre-tokenized, memory-mapped token shards with
document boundaries; and the packed row loader that training reads them with.

``TextSource`` is any text the ``datasets`` library reads, one document per record
(the record's text field): a hub name (with a config and split), a local file or
folder of .txt/.md/.jsonl/.json/.parquet/.csv files, or a builder name with data
files (``load_dataset("json", data_files=...)``). ``tools/prepare_data.py`` and
``eval/perplexity.py`` read their text through it.

Layout of a shard folder (written once by ``tools/prepare_data.py``)::

    manifest.json            tokenizer kind/fingerprint, vocab, dtype, counts, shard list
    tokenizer/               the tokenizer (``load_tokenizer`` reads it)
    shard_00000.bin          raw tokens, uint16 when every id fits (vocab <= 65,536) else uint32 (batch.token_dtype)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..extras import require
from .batch import PackedBatch, token_dtype
from .corpus import DataError
from .tokenizers import Tokenizer, load_tokenizer

DATASETS_FEATURE = "reading data through the datasets library (tools/prepare_data.py, --dataset sources)"

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"

#: File endings read from a local source, and the ``datasets`` builder that reads each.
DATASET_BUILDERS = {
    ".txt": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv",
}


# --- text sources ----------------------------------------------------------------------
def local_data_files(path: Path, split: str | None = None) -> dict[str, list[str]]:
    """The readable files of a local file or folder, grouped by ``datasets`` builder
    (groups in the order of their first file; files sorted by relative path).

    The folder's files are assigned to splits by their names, as ``load_dataset(folder)``
    does (``train.jsonl``, ``ptb.test.txt``, ``valid/part-0.parquet``; a folder without
    such names is all 'train'), and the files of ``split`` are read; ``split`` None: every
    file, unless the names give several splits (an error naming them: choose one).
    Empty files are left out.
    """
    if path.is_file():
        if split not in (None, "train"):
            raise DataError(f"{path} is a single file, which is the 'train' split only; leave out split={split!r}")
        files = [path]
    elif path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
        data_files = require("datasets.data_files", DATASETS_FEATURE)
        try:
            patterns = data_files.get_data_patterns(str(path))
            by_split = data_files.DataFilesDict.from_patterns(patterns, base_path=str(path))
        except FileNotFoundError:
            by_split = {}
        names = [str(s) for s in by_split]
        if split is None and len(names) > 1:
            raise DataError(f"{path} holds the splits {', '.join(names)} (by file names); choose one (--split)")
        if split is not None:
            if split not in names:
                raise DataError(
                    f"{path} has no files of split {split!r} (splits by file name: {', '.join(names) or 'none'}); "
                    "pass one of those"
                )
            chosen = {Path(f).resolve() for f in by_split[split]}
            files = [f for f in files if f.resolve() in chosen]
        files = [f for f in files if not any(part.startswith(".") for part in f.relative_to(path).parts)]
    else:
        raise DataError(f"{path} does not exist")
    files = [f for f in files if f.suffix.lower() in DATASET_BUILDERS]
    if not files:
        raise DataError(f"no {'/'.join(DATASET_BUILDERS)} files in {path}" + (f" for split {split!r}" if split else ""))
    groups: dict[str, list[str]] = {}
    # Empty files hold no records (and some datasets readers fail on them).
    for f in files:
        if f.stat().st_size > 0:
            groups.setdefault(DATASET_BUILDERS[f.suffix.lower()], []).append(str(f))
    if not groups:
        raise DataError(f"{path} holds no records: its {len(files)} data file(s) are empty")
    return groups


def _load_dataset(what: str, *args, **kwargs):
    """``datasets.load_dataset`` whose failures become DataError naming the source."""
    datasets = require("datasets", DATASETS_FEATURE)

    try:
        return datasets.load_dataset(*args, **kwargs)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 (any datasets/hub/IO failure: report it, with its type)
        raise DataError(f"datasets cannot load {what} ({_root_cause(e)})") from e


def _root_cause(e: BaseException) -> str:
    """'Type: message' of the innermost cause (datasets wraps the real error), first and last line."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = " ... ".join(lines[:1] + lines[1:][-1:])
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclass
class TextSource:
    """Documents read through ``datasets``: one per record, the record's ``text_field``.

    ``name`` is a local file or folder; or, with ``data_files``, a builder name
    (``json``, ``parquet``, ``text``, ``csv``: ``load_dataset(name, data_files=...)``);
    or else a hub data set name (with ``config``). Text files are one document each
    (``sample_by``: or one per paragraph / line); ``datasets`` reads them in text mode,
    so ``\\r\\n`` line ends become ``\\n``. For a local folder see
    ``local_data_files``. A hub data set without ``split`` must have exactly one.

    ``streaming`` iterates the records as they are read, without materialising the
    data set in the ``datasets`` Arrow cache (``cache_dir``) first: memory and disk
    stay bounded for any corpus size. Iterating the source starts over each time;
    ``max_docs`` / ``max_bytes`` cap what one pass yields (the last document is cut at
    a UTF-8 character boundary). A record whose text is null is an empty document.
    """

    name: str
    config: str | None = None
    split: str | None = None
    text_field: str = "text"
    streaming: bool = False
    data_files: list[str] | None = None
    sample_by: str = "document"
    max_docs: int | None = None
    max_bytes: int | None = None
    cache_dir: str | None = None
    _opened: list[tuple[Any, str, str]] | None = field(default=None, init=False, repr=False)

    def _load_files(self, builder: str, files: list[str], split: str) -> tuple[Any, str, str]:
        extra = {"sample_by": self.sample_by} if builder == "text" else {}
        label = f"{builder} files {files[0]}" + (f" (+{len(files) - 1} more)" if len(files) > 1 else "")
        ds = _load_dataset(label, builder, data_files=files, split=split, streaming=self.streaming,
                           cache_dir=self.cache_dir, **extra)
        return ds, "text" if builder == "text" else self.text_field, label

    def _load_hub(self) -> tuple[Any, str, str]:
        label = self.name + (f" ({self.config})" if self.config else "")
        split = self.split
        if split is None:
            datasets = require("datasets", DATASETS_FEATURE)

            try:
                names = datasets.get_dataset_split_names(self.name, self.config)
            except Exception as e:  # noqa: BLE001
                raise DataError(
                    f"{self.name} is not a local file or folder, and the hub data set cannot be opened "
                    f"({_root_cause(e)}); check the path, or the name and the network (hub names need it unless cached)"
                ) from e
            if len(names) != 1:
                raise DataError(f"{label} has splits {', '.join(names)}; choose one (--split)")
            split = names[0]
        ds = _load_dataset(f"the hub data set {label} split {split!r}", self.name, self.config, split=split,
                           streaming=self.streaming, cache_dir=self.cache_dir)
        return ds, self.text_field, f"{label} [{split}]"

    def open(self) -> list[tuple[Any, str, str]]:
        """``(dataset, text field, label)`` of every part, loaded once."""
        if self._opened is None:
            if self.data_files:
                self._opened = [self._load_files(self.name, list(self.data_files), self.split or "train")]
            elif Path(self.name).expanduser().exists():
                groups = local_data_files(Path(self.name).expanduser(), self.split)
                self._opened = [self._load_files(b, files, "train") for b, files in groups.items()]
            else:
                self._opened = [self._load_hub()]
        return self._opened

    def check(self) -> None:
        """Fail now, with a message saying what to do, when the source cannot give
        documents: it cannot be loaded, has no records, or lacks the text field."""
        records = 0
        for ds, text_field, label in self.open():
            first = next(iter(ds), None)
            if first is None:
                continue
            records += 1
            if text_field not in first:
                raise DataError(
                    f"records of {label} have no field {text_field!r}; available columns: "
                    f"{', '.join(sorted(first))} (choose one with --text-field)"
                )
        if records == 0:
            raise DataError(f"{self.name} holds no records (an empty data set or split); nothing to read")

    def __iter__(self) -> Iterator[str]:
        remaining = self.max_bytes
        count = 0
        for ds, text_field, label in self.open():
            for i, row in enumerate(ds):
                if (self.max_docs is not None and count >= self.max_docs) or (remaining is not None and remaining <= 0):
                    return
                if text_field not in row:
                    raise DataError(
                        f"record {i} of {label} has no field {text_field!r}; its columns: {', '.join(sorted(row))}"
                    )
                text = row[text_field]
                if text is None:
                    text = ""
                if not isinstance(text, str):
                    raise DataError(
                        f"record {i} of {label}: field {text_field!r} holds {type(text).__name__}, not text"
                    )
                if remaining is not None:
                    data = text.encode("utf-8")
                    if len(data) > remaining:
                        text = data[:remaining].decode("utf-8", errors="ignore")
                    remaining -= min(len(data), remaining)
                count += 1
                yield text


# --- shards ------------------------------------------------------------------------------


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
        input_ids = torch.from_numpy(toks[:, :-1])
        labels = torch.from_numpy(toks[:, 1:].copy())
        # Each row starts from the empty state; the first token of the next document is
        # not predicted from the previous one (the model has just reset there).
        labels[torch.from_numpy(starts[:, 1:])] = -100
        return PackedBatch(input_ids, labels, torch.from_numpy(starts[:, :-1].copy()), rows)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size", self.world_size) != self.world_size:
            raise ValueError(
                f"the checkpoint's loader ran on {state['world_size']} ranks, this run on {self.world_size}; "
                "resume with the same number of ranks"
            )
        self.epoch, self.index, self._perm = int(state["epoch"]), int(state["index"]), None
