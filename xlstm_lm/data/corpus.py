"""Training text: the built-in Python-stdlib corpus, or the user's file or folder.

Built-in corpus: the top-level ``*.py`` files of the running interpreter's
standard library (``sysconfig.get_paths()["stdlib"]``), in sorted name order,
until ``DEFAULT_MAX_BYTES``. Every Python install has it, so ``python train.py``
needs no download and no data folder. It differs slightly between Python
versions; the token cache is keyed by content, so that is harmless.

User corpus (``data.path``): a single text file is one document; a folder is read
recursively, every file whose name ends in one of ``TEXT_SUFFIXES`` (hidden files
and folders skipped), in sorted relative-path order, each file one document.
Files must be UTF-8.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

#: Bytes of the built-in corpus read when ``max_bytes`` is not given (~4 MB).
DEFAULT_MAX_BYTES = 4_000_000

#: File name endings read from a corpus folder.
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")


class DataError(ValueError):
    """The training data is missing, empty or unreadable; the message says what to do."""


@dataclass(frozen=True)
class Document:
    """One file of the corpus."""

    name: str
    """Path of the file relative to the corpus root (or its name)."""
    text: str
    """Its content (possibly truncated by max_bytes)."""


def stdlib_dir() -> Path:
    """Folder of the running interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def default_corpus_files() -> list[Path]:
    """Top-level .py files of the standard library, sorted by name."""
    root = stdlib_dir()
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise DataError(
            f"the built-in corpus (Python standard library sources) was not found in {root}; "
            "this Python install ships without .py sources — pass your own text with --data PATH"
        )
    return files


def _corpus_folder_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Sorted, non-hidden folders so the walk (and so the corpus) is deterministic.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(TEXT_SUFFIXES):
                files.append(Path(dirpath) / name)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check its permissions or remove it from the corpus") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (invalid byte at offset {e.start}); convert it to UTF-8 "
            f"(e.g. iconv -t UTF-8) or remove it from the corpus"
        ) from None


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """Longest prefix of ``text`` whose UTF-8 encoding fits in ``max_bytes``."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def load_corpus(path: str | os.PathLike | None, max_bytes: int | None = None, flag: str = "--data") -> list[Document]:
    """Read the corpus at ``path`` (None: the built-in one) as documents, at most ``max_bytes`` bytes.

    Raises DataError when the path is missing, holds no text, or a file cannot be read;
    its advice names ``flag``, the option that gave the path (``--text`` in eval/perplexity.py).
    """
    if path is None:
        root, files = stdlib_dir(), default_corpus_files()
        max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        source = f"the built-in corpus ({root})"
    else:
        root = Path(path).expanduser()
        source = str(root)
        if not root.exists():
            raise DataError(f"data path {root} does not exist; pass a text file or a folder of text files with {flag} PATH")
        if root.is_file():
            files = [root]
        elif root.is_dir():
            files = _corpus_folder_files(root)
            if not files:
                raise DataError(
                    f"data folder {root} holds no text files (looked for {', '.join('*' + s for s in TEXT_SUFFIXES)}, "
                    f"recursively); add some, or pass a single file with {flag}"
                )
        else:
            raise DataError(f"data path {root} is neither a file nor a folder")

    docs: list[Document] = []
    remaining = max_bytes
    for f in files:
        if remaining is not None and remaining <= 0:
            break
        text = _read_text(f)
        if remaining is not None:
            nbytes = len(text.encode("utf-8"))
            if nbytes > remaining:
                text = _truncate_utf8(text, remaining)
                nbytes = remaining
            remaining -= nbytes
        if text:
            name = f.name if root.is_file() or path is None else f.relative_to(root).as_posix()
            docs.append(Document(name=name, text=text))
    if not docs:
        raise DataError(f"{source} holds no text (0 bytes); pass a file or folder with some text in it")
    return docs


def corpus_bytes(docs: list[Document]) -> int:
    """Total UTF-8 size of the documents."""
    return sum(len(d.text.encode("utf-8")) for d in docs)


def corpus_fingerprint(docs: list[Document]) -> str:
    """SHA-256 over the documents' names and texts (hex), for cache keys."""
    h = hashlib.sha256()
    for d in docs:
        for part in (d.name, d.text):
            b = part.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Split into (train, val): val is the last ``val_fraction`` of the bytes.

    The cut goes at a document boundary when one lies within a tenth of the
    validation size of the exact cut (and leaves both sides non-empty); otherwise
    inside the document it falls in, at the start of the next line (or at the
    exact character when that document has no later newline). Raises DataError
    when either side would be empty.
    """
    sizes = [len(d.text.encode("utf-8")) for d in docs]
    total = sum(sizes)
    val_bytes = total * val_fraction
    cut = total - val_bytes
    starts = [0]
    for s in sizes:
        starts.append(starts[-1] + s)
    # Nearest interior document boundary (index i: docs[:i] | docs[i:]).
    interior = range(1, len(docs))
    if interior:
        best = min(interior, key=lambda i: abs(starts[i] - cut))
        if abs(starts[best] - cut) <= 0.1 * val_bytes:
            return docs[:best], docs[best:]
    # Cut inside the document that holds the cut point.
    i = max(j for j in range(len(docs)) if starts[j] <= cut)
    doc = docs[i]
    encoded = doc.text.encode("utf-8")
    offset = int(cut - starts[i])
    newline = encoded.find(b"\n", offset)
    if newline != -1 and newline + 1 < len(encoded):
        offset = newline + 1
    head = encoded[:offset].decode("utf-8", errors="ignore")
    tail = doc.text[len(head):]
    train = docs[:i] + ([Document(doc.name, head)] if head else [])
    val = ([Document(doc.name, tail)] if tail else []) + docs[i + 1:]
    if not train or not val:
        raise DataError(
            f"the corpus ({total} bytes) is too small to split into train and validation text with "
            f"data.val_fraction={val_fraction}; add more text"
        )
    return train, val


__all__ = [
    "DEFAULT_MAX_BYTES",
    "TEXT_SUFFIXES",
    "DataError",
    "Document",
    "corpus_bytes",
    "corpus_fingerprint",
    "default_corpus_files",
    "load_corpus",
    "split_documents",
    "stdlib_dir",
]
