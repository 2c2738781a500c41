"""Tokenizers behind one small interface: byte, sentencepiece, Hugging Face.

Every tokenizer has ``encode(str) -> list[int]``, ``decode(list[int]) -> str``,
``vocab_size``, ``eos_id`` (the id that separates documents, or None),
``fingerprint()`` (a string that changes whenever the id mapping does; the token
cache is keyed by it), ``save(dir)`` and ``Class.load(dir)``. ``load_tokenizer(dir)``
loads whichever kind was saved there (``tokenizer.json`` names it).
"""

from __future__ import annotations

import hashlib
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import DataError

_META = "tokenizer.json"


class Tokenizer(ABC):
    """Text <-> token ids."""

    kind: str = ""
    vocab_size: int
    eos_id: int | None

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several texts (subclasses batch this where the library can)."""
        return [self.encode(t) for t in texts]

    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies the id mapping (kind + content hash)."""

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, **self._save_files(directory)}
        (directory / _META).write_text(json.dumps(meta, indent=2) + "\n")

    def _save_files(self, directory: Path) -> dict[str, Any]:
        return {}

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Read a tokenizer written by ``save``."""


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: vocabulary 256, no training, no unknown text.

    Byte 0 (NUL, which text corpora do not contain) doubles as the end-of-document id.
    """

    kind = "byte"

    def __init__(self):
        self.vocab_size = 256
        self.eos_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        """Fast path for the dataset: uint8 array of the UTF-8 bytes."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return "byte"

    @classmethod
    def load(cls, directory: str | Path) -> ByteTokenizer:
        return cls()


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model (unigram, byte fallback) trained on the training text.

    Trained with identity normalisation, no dummy prefix and whitespace-only pieces
    allowed, so decode(encode(text)) == text exactly (code indentation survives);
    characters outside the vocabulary fall back to their UTF-8 bytes.
    """

    kind = "sentencepiece"
    _FILE = "sentencepiece.model"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = int(self._sp.vocab_size())
        eos = int(self._sp.eos_id())
        self.eos_id = eos if eos >= 0 else None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, max_sentences: int = 200_000) -> SentencePieceTokenizer:
        """Train on the lines of ``texts``; ``vocab_size`` is an upper bound on tiny corpora."""
        import sentencepiece as spm

        lines = [line for t in texts for line in t.splitlines() if line.strip()]
        if not lines:
            raise DataError("cannot train a sentencepiece tokenizer: the training text has no non-blank lines")
        model = io.BytesIO()
        # Fixed seed: the sentence sampling (corpora above max_sentences lines) is reproducible.
        spm.set_random_generator_seed(0)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=model,
                vocab_size=vocab_size,
                model_type="unigram",
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                character_coverage=0.9995,
                # A soft limit: tiny corpora get fewer pieces instead of an error.
                hard_vocab_limit=False,
                input_sentence_size=max_sentences,
                shuffle_input_sentence=True,
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise DataError(f"sentencepiece training failed: {e}; try another data.sp_vocab_size or more text") from None
        return cls(model.getvalue())

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self._sp.encode(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def fingerprint(self) -> str:
        return "sentencepiece-" + hashlib.sha256(self._proto).hexdigest()

    def _save_files(self, directory: Path) -> dict[str, Any]:
        (directory / self._FILE).write_bytes(self._proto)
        return {"model_file": self._FILE}

    @classmethod
    def load(cls, directory: str | Path) -> SentencePieceTokenizer:
        return cls((Path(directory) / cls._FILE).read_bytes())


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer (``AutoTokenizer.from_pretrained``); local paths work offline."""

    kind = "huggingface"
    _SUBDIR = "hf"

    def __init__(self, name_or_path: str):
        from transformers import AutoTokenizer

        try:
            if Path(name_or_path).expanduser().exists():
                tok = AutoTokenizer.from_pretrained(name_or_path)
            else:
                tok = self._from_hub(name_or_path)
        except DataError:
            raise
        except (OSError, ValueError) as e:
            raise DataError(
                f"data.tokenizer={name_or_path!r} is neither 'byte', 'sentencepiece' nor a loadable Hugging Face "
                f"tokenizer ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "give a local tokenizer folder or a hub name that is cached or reachable"
            ) from None
        # Whole documents are encoded at once; the model's context limit does not apply here.
        tok.model_max_length = int(1e12)
        self.name = name_or_path
        self._tok = tok
        self.vocab_size = len(tok)
        self.eos_id = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id

    @staticmethod
    def _from_hub(name: str):
        """A hub tokenizer: from the local cache if it is there, else after one quick probe of
        the Hub, so an unreachable Hub is one clear error at once (the download itself
        retries for about a minute before failing)."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError):
            pass
        from huggingface_hub import HfApi

        try:
            HfApi().model_info(name, timeout=10)
        except Exception as e:  # noqa: BLE001 - connection, DNS, 404, auth: all end here with the reason
            raise DataError(
                f"data.tokenizer={name!r} is neither 'byte', 'sentencepiece' nor a loadable Hugging Face tokenizer: "
                f"no such local folder, not cached, and the Hub cannot provide it ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); offline? download the tokenizer where the Hub is "
                "reachable and pass its local folder"
            ) from None
        return AutoTokenizer.from_pretrained(name)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self._tok(texts, add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def fingerprint(self) -> str:
        vocab = sorted(self._tok.get_vocab().items())
        blob = json.dumps([type(self._tok).__name__, vocab], ensure_ascii=False).encode("utf-8")
        return "huggingface-" + hashlib.sha256(blob).hexdigest()

    def _save_files(self, directory: Path) -> dict[str, Any]:
        self._tok.save_pretrained(directory / self._SUBDIR)
        return {"name": self.name, "files": self._SUBDIR}

    @classmethod
    def load(cls, directory: str | Path) -> HFTokenizer:
        out = cls(str(Path(directory) / cls._SUBDIR))
        meta = json.loads((Path(directory) / _META).read_text())
        out.name = meta.get("name", out.name)
        return out


_KINDS: dict[str, type[Tokenizer]] = {
    ByteTokenizer.kind: ByteTokenizer,
    SentencePieceTokenizer.kind: SentencePieceTokenizer,
    HFTokenizer.kind: HFTokenizer,
}


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer saved in ``directory`` by ``Tokenizer.save``."""
    meta_path = Path(directory) / _META
    if not meta_path.is_file():
        raise DataError(f"{directory} holds no saved tokenizer ({_META} is missing)")
    kind = json.loads(meta_path.read_text()).get("kind")
    if kind not in _KINDS:
        raise DataError(f"{meta_path} names unknown tokenizer kind {kind!r}; known: {', '.join(_KINDS)}")
    return _KINDS[kind].load(directory)


def build_tokenizer(spec: str, train_texts: Iterable[str] = (), sp_vocab_size: int = 1024) -> Tokenizer:
    """Tokenizer named by ``data.tokenizer``: 'byte', 'sentencepiece' (trained on ``train_texts``) or a HF name/path."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "sentencepiece":
        return SentencePieceTokenizer.train(train_texts, vocab_size=sp_vocab_size)
    return HFTokenizer(spec)


__all__ = [
    "ByteTokenizer",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "load_tokenizer",
]
