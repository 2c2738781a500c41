"""Exact-match accuracy of a fine-tuned model on held-out instruction examples.

Every JSONL row (``{"prompt", "response"}`` or ``{"messages": [...]}``, as ``data.sft``
reads them) is one question: the reference is the ``response`` (a messages row: its
last assistant message), the prompt is everything before it. The prompt is built
exactly as fine-tuning built it (``ChatFormatter.prompt_ids`` for a run dir or
checkpoint, with the run's ``data.sft.chat_template``; for a Hugging Face folder its
exported chat template, ``apply_chat_template(..., add_generation_prompt=True)``,
which gives the same ids). The model answers greedily until its end-of-document
token (eos) or ``max_new_tokens``; an answer is correct when it equals the reference
after stripping surrounding whitespace on both.

Prompts are decoded in batches, left-padded with an ``attention_mask`` (padding leaves
our models' recurrent state untouched, so a row answers as it does alone).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.corpus import DataError
from ..data.sft import ChatFormatter, read_jsonl, to_messages
from .perplexity import LoadedModel

SLACK_TOKENS = 16
"""Default ``max_new_tokens``: the longest reference's tokens plus this many."""


@dataclass
class Example:
    messages: list[dict[str, str]]
    """The conversation before the reference answer."""
    reference: str
    prompt: str
    """The text shown for the example: the last message before the answer."""


def load_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    """The rows of a JSONL file as (conversation before the answer, reference answer)."""
    rows = read_jsonl(path)  # DataError: missing file, no rows, bad JSON
    if limit is not None:
        rows = rows[:limit]
    examples = []
    for n, row in enumerate(rows, 1):
        where = f"{path} row {n}"
        if "messages" not in row and not ("prompt" in row or "response" in row):
            raise DataError(f"{where}: needs 'prompt' and 'response' fields or a 'messages' list, got keys {sorted(row)}")
        messages = to_messages(row, "auto", where)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if last == 0:
            raise DataError(f"{where}: the assistant answers first; there is no prompt before the reference answer")
        examples.append(Example(messages[:last], messages[last]["content"], messages[last - 1]["content"]))
    return examples


class PromptBuilder:
    """Prompt ids, answer decoding and stop tokens of a loaded model, as fine-tuning saw them."""

    def __init__(self, loaded: LoadedModel, chat_template: str | None = None):
        self.loaded = loaded
        if loaded.hf_folder:
            tok = loaded.tokenizer
            if chat_template is not None:
                raise DataError(
                    "--chat-template applies to run dirs and checkpoints; a Hugging Face folder is evaluated with "
                    "its own (exported) chat template"
                )
            if not getattr(tok, "chat_template", None):
                raise DataError(
                    f"{loaded.name} has no chat template (was it exported from a data.sft run?); evaluate the run "
                    "dir or checkpoint instead, with --chat-template simple|plain"
                )
            self.template = "the folder's chat template"
            eos = tok.eos_token_id
            if eos is None:
                eos = getattr(loaded.model.generation_config, "eos_token_id", None)
            self.stop_ids = {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
        else:
            sft = ((loaded.run_cfg or {}).get("data") or {}).get("sft") or {}
            asked = chat_template or sft.get("chat_template") or "auto"
            self.formatter = ChatFormatter(loaded.tokenizer, asked)
            origin = "--chat-template" if chat_template else ("the run's data.sft.chat_template" if sft else "default (no data.sft in the run)")
            self.template = f"{self.formatter.template} ({origin}: {asked})"
            self.stop_ids = {int(loaded.tokenizer.eos_id)}
        if not self.stop_ids:
            raise DataError(f"{loaded.name}: the tokenizer has no end-of-document (eos) token to stop answers at")
        self.pad_id = min(self.stop_ids)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        if self.loaded.hf_folder:
            ids = self.loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
            return [int(i) for i in ids]
        return self.formatter.prompt_ids(messages)

    def encode(self, text: str) -> list[int]:
        tok = self.loaded.tokenizer
        return list(tok(text, add_special_tokens=False)["input_ids"]) if self.loaded.hf_folder else tok.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.loaded.tokenizer.decode(ids)


@torch.no_grad()
def greedy_answers(
    model: Any, prompts: list[list[int]], stop_ids: set[int], pad_id: int, max_new_tokens: int, batch_size: int,
    device: torch.device,
) -> list[tuple[list[int], bool]]:
    """Greedy continuation of every prompt up to (not including) its first stop token:
    ``(answer ids, stopped)`` per prompt, in order; ``stopped`` False: no stop token
    within ``max_new_tokens``. Prompts of similar length share a left-padded batch."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[tuple[list[int], bool]] = [([], False)] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.tensor([[pad_id] * (width - len(prompts[i])) + prompts[i] for i in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chunk], device=device)
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=sorted(stop_ids), pad_token_id=pad_id,
        )
        for i, row in zip(chunk, out[:, width:].tolist()):
            cut = next((k for k, t in enumerate(row) if t in stop_ids), None)
            answers[i] = (row, False) if cut is None else (row[:cut], True)
    return answers


@dataclass
class SFTAccuracyResult:
    model: str
    data: str
    chat_template: str
    examples: int
    correct: int
    accuracy: float
    """Exact matches (stripped) / examples."""
    no_eos: int
    """Answers cut at max_new_tokens without an end-of-document token."""
    max_new_tokens: int
    seconds: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Per example: prompt, reference, answer, correct, stopped (in file order)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sft_accuracy(
    loaded: LoadedModel, data: str | Path, max_new_tokens: int | None = None, limit: int | None = None,
    batch_size: int = 32, chat_template: str | None = None,
) -> SFTAccuracyResult:
    """Greedy exact-match accuracy of ``loaded`` on the JSONL examples of ``data``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    examples = load_examples(data, limit)
    builder = PromptBuilder(loaded, chat_template)
    prompts = [builder.prompt_ids(e.messages) for e in examples]
    if any(not p for p in prompts):
        raise DataError(f"{data}: a prompt renders to no tokens")
    if max_new_tokens is None:
        max_new_tokens = max(len(builder.encode(e.reference)) for e in examples) + SLACK_TOKENS
    t0 = time.perf_counter()
    outs = greedy_answers(loaded.model, prompts, builder.stop_ids, builder.pad_id, max_new_tokens, batch_size, loaded.device)
    seconds = time.perf_counter() - t0
    rows = []
    for e, (ids, stopped) in zip(examples, outs):
        answer = builder.decode(ids)
        rows.append({"prompt": e.prompt, "reference": e.reference, "answer": answer,
                     "correct": answer.strip() == e.reference.strip(), "stopped": stopped})
    correct = sum(r["correct"] for r in rows)
    return SFTAccuracyResult(
        loaded.name, str(data), builder.template, len(rows), correct, correct / len(rows),
        sum(not r["stopped"] for r in rows), max_new_tokens, seconds, rows,
    )


__all__ = ["Example", "PromptBuilder", "SFTAccuracyResult", "greedy_answers", "load_examples", "sft_accuracy"]
