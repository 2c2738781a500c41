"""Supervised fine-tuning data: JSONL instruction rows -> packed rows with loss masks and resets.

A row of the JSONL file (``data.sft.path``) is one example, in one of two formats:

* ``{"prompt": "...", "response": "..."}`` (format ``prompt_response``);
* ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``
  (format ``messages``; the last message should be the assistant's).

``format: auto`` picks per row by its keys. A prompt/response row is the two-message
conversation ``[user: prompt, assistant: response]``. Conversations are rendered with
``chat_template``:

* ``simple`` (the default where the tokenizer has no template of its own)::

      <|system|>\\n{content}\\n<|user|>\\n{content}\\n<|assistant|>\\n{content}<eos>

  i.e. every message is its role tag ``<|role|>`` and a newline, then its content;
  non-assistant contents end with a newline, assistant contents with the tokenizer's
  end-of-document token (eos). The tags are plain text (no special tokens), so the
  byte and sentencepiece tokenizers need no new vocabulary.
* ``plain``: no role tags: ``{prompt}\\n{response}<eos>`` (non-assistant contents end
  with a newline, assistant contents with eos); the shortest rendering.
* ``hf``: the Hugging Face tokenizer's own ``chat_template``
  (``apply_chat_template``); ``auto`` uses it when the tokenizer has one, else ``simple``.

Only assistant tokens (their content and the eos/end-of-turn that closes it) are
trained; every other target is -100. Examples are packed greedily, in a seeded order,
into rows of ``train.seq_len`` positions; ``reset`` marks each example's first
position, so every example starts from a zero recurrent state (``XLSTMLM.forward``'s
``reset``). An example longer than a row is cut to it (counted in the summary). The
held-out split is ``data.sft.val_path`` or, without one, the last
``data.sft.val_fraction`` of the rows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..config_utils import check
from .batch import PackedBatch
from .corpus import DataError
from .tokenizers import HFTokenizer, Tokenizer

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


@dataclass
class SFTConfig:
    """Supervised fine-tuning on instruction data (replaces the text corpus of ``data.path``)."""

    path: str = ""
    """JSONL file of training examples (one JSON object per line)."""
    format: Literal["auto", "prompt_response", "messages"] = "auto"
    """Row format: prompt/response fields, a messages list, or auto (by each row's keys)."""
    chat_template: Literal["auto", "simple", "plain", "hf"] = "auto"
    """How conversations become text: see ``xlstm_lm.data.sft``; auto = hf if the tokenizer has one, else simple."""
    val_path: str | None = None
    """JSONL file of held-out examples (None: the last val_fraction of path's rows)."""
    val_fraction: float = 0.1
    """Fraction of the rows held out for the evaluation loss when val_path is not given."""

    def __post_init__(self):
        check(self.path != "", "data.sft.path must name a JSONL file of examples")
        check(0 < self.val_fraction < 1, f"data.sft.val_fraction must be in (0, 1), got {self.val_fraction}")


# --- rows -> conversations -----------------------------------------------------------
def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.sft: {path} is not a file; give a JSONL file with one example per line")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: each line must be a JSON object, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no examples")
    return rows


def to_messages(row: dict[str, Any], fmt: str, where: str = "") -> list[dict[str, str]]:
    """The conversation of one JSONL row (format ``auto``, ``prompt_response`` or ``messages``)."""
    if fmt == "auto":
        fmt = "messages" if "messages" in row else "prompt_response"
    if fmt == "prompt_response":
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
            raise DataError(f"{where}: a prompt_response row needs string fields 'prompt' and 'response', got keys {sorted(row)}")
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: a messages row needs a non-empty 'messages' list, got keys {sorted(row)}")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: each message needs 'role' in {ROLES} and a string 'content', got {m!r}")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant message (nothing to train on)")
    return messages


# --- conversations -> (ids, trained) ---------------------------------------------------
class ChatFormatter:
    """Renders conversations to token ids plus a per-token 'is an assistant token' mask."""

    def __init__(self, tokenizer: Tokenizer, template: str = "auto"):
        hf_template = isinstance(tokenizer, HFTokenizer) and bool(getattr(tokenizer._tok, "chat_template", None))
        if template == "auto":
            template = "hf" if hf_template else "simple"
        if template == "hf" and not hf_template:
            raise DataError(
                f"data.sft.chat_template='hf' but the tokenizer ({tokenizer.kind}) has no chat template; "
                "use chat_template: simple or plain"
            )
        if tokenizer.eos_id is None:
            raise DataError("supervised fine-tuning needs a tokenizer with an end-of-document (eos) token")
        self.tokenizer = tokenizer
        self.template = template

    def _segments(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        """(text, trained) pieces of a conversation; trained pieces end with eos (added as an id)."""
        if self.template == "hf":
            tok = self.tokenizer._tok
            out, done = [], ""
            for i, m in enumerate(messages):
                if m["role"] == "assistant":
                    prefix = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
                    if prefix.startswith(done) and len(prefix) > len(done):
                        out.append((prefix[len(done):], False))
                        done = prefix
                full = tok.apply_chat_template(messages[: i + 1], tokenize=False)
                if not full.startswith(done):
                    raise DataError("the tokenizer's chat template does not render conversations prefix by prefix; use chat_template: simple")
                out.append((full[len(done):], m["role"] == "assistant"))
                done = full
            return out
        out = []
        for m in messages:
            tag = f"<|{m['role']}|>\n" if self.template == "simple" else ""
            if m["role"] == "assistant":
                out.append((tag, False))
                out.append((m["content"], True))
            else:
                out.append((tag + m["content"] + "\n", False))
        return out

    def _encode_segments(self, segments: list[tuple[str, bool]]) -> tuple[list[int], list[bool]]:
        ids: list[int] = []
        trained: list[bool] = []
        eos = self.tokenizer.eos_id
        for text, is_trained in segments:
            piece = self.tokenizer.encode(text) if text else []
            if is_trained and (not piece or piece[-1] != eos):
                piece = piece + [eos]
            ids += piece
            trained += [is_trained] * len(piece)
        return ids, trained

    def encode(self, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
        """Token ids of a whole conversation and, per token, whether it is trained."""
        return self._encode_segments(self._segments(messages))

    def prompt_ids(self, prompt: str | list[dict[str, str]]) -> list[int]:
        """Ids to feed for generation: the conversation up to where the assistant answers,
        tokenized exactly as in training (earlier assistant turns end with eos)."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        # render with an empty answer to come, then drop that answer's own piece
        segments = self._segments(messages + [{"role": "assistant", "content": ""}])
        return self._encode_segments(segments[:-1])[0]


# --- packing --------------------------------------------------------------------------------
def pack_examples(examples: list[tuple[list[int], list[bool]]], seq_len: int, pad_id: int) -> tuple[PackedBatch, int]:
    """Greedily pack (ids, trained) examples into rows of ``seq_len`` positions, in the given order.

    An example of n tokens takes n - 1 positions (inputs ids[:-1], targets ids[1:]; a
    target is kept only where it is a trained token). Returns the rows and the number
    of examples cut to fit a row.
    """
    rows_in, rows_lab, rows_rst = [], [], []
    cur_in, cur_lab, cur_rst = [], [], []
    truncated = 0

    def flush():
        pad = seq_len - len(cur_in)
        rows_in.append(cur_in + [pad_id] * pad)
        rows_lab.append(cur_lab + [IGNORE_INDEX] * pad)
        # Padding starts a document of its own: it never feeds an example's state.
        rows_rst.append(cur_rst + [True] + [False] * (pad - 1) if pad else cur_rst)

    for ids, trained in examples:
        if len(ids) < 2:
            continue
        inputs, labels = ids[:-1], [t if m else IGNORE_INDEX for t, m in zip(ids[1:], trained[1:])]
        if len(inputs) > seq_len:
            inputs, labels = inputs[:seq_len], labels[:seq_len]
            truncated += 1
        if len(cur_in) + len(inputs) > seq_len:
            flush()
            cur_in, cur_lab, cur_rst = [], [], []
        cur_in += inputs
        cur_lab += labels
        cur_rst += [True] + [False] * (len(inputs) - 1)
    if cur_in:
        flush()
    if not rows_in:
        raise DataError("data.sft: no example has two or more tokens")
    batch = PackedBatch(
        torch.tensor(rows_in, dtype=torch.long), torch.tensor(rows_lab, dtype=torch.long), torch.tensor(rows_rst, dtype=torch.bool)
    )
    return batch, truncated


class SFTBatches:
    """Batches of ``batch_size`` packed rows, a fresh seeded permutation every epoch (resumable)."""

    def __init__(self, rows: PackedBatch, batch_size: int, seed: int):
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0

    def _order(self) -> torch.Tensor:
        return torch.randperm(self.rows.shape[0], generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))

    def next_batch(self) -> PackedBatch:
        picked: list[torch.Tensor] = []
        need = self.batch_size
        while need > 0:
            order = self._order()[self.position :]
            take = order[:need]
            picked.append(take)
            need -= take.numel()
            self.position += take.numel()
            if self.position >= self.rows.shape[0]:
                self.epoch, self.position = self.epoch + 1, 0
        return self.rows[torch.cat(picked)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


@dataclass
class SFTData:
    """What the trainer needs of an SFT run (the fields the text-corpus path also provides)."""

    tokenizer: Tokenizer
    windows: SFTBatches
    val: PackedBatch
    unigram_ppl: float
    summary: str
    formatter: ChatFormatter


def load_sft_data(cfg: SFTConfig, tokenizer: Tokenizer, seq_len: int, batch_size: int, seed: int) -> SFTData:
    """Read, render, split and pack the examples of ``cfg``."""
    rows = read_jsonl(cfg.path)
    if cfg.val_path is not None:
        train_rows, val_rows = rows, read_jsonl(cfg.val_path)
    else:
        n_val = max(1, int(round(len(rows) * cfg.val_fraction)))
        if n_val >= len(rows):
            raise DataError(f"data.sft: {cfg.path} has {len(rows)} rows, too few to hold out {n_val} for evaluation; add rows or set val_path")
        train_rows, val_rows = rows[:-n_val], rows[-n_val:]
    formatter = ChatFormatter(tokenizer, cfg.chat_template)

    def encode(split_rows: list[dict], name: str) -> list[tuple[list[int], list[bool]]]:
        return [formatter.encode(to_messages(r, cfg.format, f"{name} row {i + 1}")) for i, r in enumerate(split_rows)]

    train_ex, val_ex = encode(train_rows, cfg.path), encode(val_rows, cfg.val_path or cfg.path)
    # Seeded shuffle before packing, so which examples share a row does not follow file order.
    random.Random(seed).shuffle(train_ex)
    pad = int(tokenizer.eos_id)
    train_packed, cut_train = pack_examples(train_ex, seq_len, pad)
    val_packed, cut_val = pack_examples(val_ex, seq_len, pad)
    train_targets = train_packed.labels[train_packed.labels != IGNORE_INDEX].numpy()
    val_targets = val_packed.labels[val_packed.labels != IGNORE_INDEX].numpy()
    from .dataset import unigram_perplexity

    unigram = unigram_perplexity(train_targets, val_targets, tokenizer.vocab_size)
    summary = (
        f"data: sft {cfg.path} ({formatter.template} template): {len(train_ex)} train / {len(val_ex)} val examples -> "
        f"{train_packed.shape[0]} / {val_packed.shape[0]} packed rows of {seq_len}, "
        f"{train_targets.size:,} / {val_targets.size:,} trained targets"
        + (f"; {cut_train + cut_val} examples cut to seq_len" if cut_train + cut_val else "")
        + f" (tokenizer {tokenizer.kind}, vocab {tokenizer.vocab_size})"
    )
    return SFTData(tokenizer, SFTBatches(train_packed, batch_size, seed), val_packed, unigram, summary, formatter)


def iter_packed(batch: PackedBatch, batch_size: int) -> Iterator[PackedBatch]:
    for i in range(0, batch.shape[0], batch_size):
        yield batch[i : i + batch_size]


__all__ = [
    "IGNORE_INDEX",
    "ChatFormatter",
    "SFTBatches",
    "SFTConfig",
    "SFTData",
    "load_sft_data",
    "pack_examples",
    "read_jsonl",
    "to_messages",
]
