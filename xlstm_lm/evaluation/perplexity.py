"""Perplexity, bits per byte and bits per character of a model on any text.

Two modes:

- ``stream``: each document is read front to back in chunks of ``chunk`` tokens,
  carrying the recurrent state from chunk to chunk, so every token is predicted
  from the whole document before it (the natural mode of recurrent models; any
  length). Needs a model that returns its state (our models, native or HF-wrapped).
- ``window``: the transformer convention: windows of ``window`` tokens moved by
  ``stride``; each token is scored once, in the first window that reaches it, with
  up to ``window - stride`` tokens of context. Works with any causal LM.

Accounting (identical in both modes): when the tokenizer has a document separator
(``eos``: training puts one after every document) it is prepended, so every token
of the document is scored, the first one conditioned on "a document starts here",
and ``bits per byte`` divides the summed negative log-likelihood (in bits) by the
document's UTF-8 bytes; models with different tokenizers compare. Without a
separator the first token cannot be predicted and is not scored, and its text is
left out of the byte count. ``bits per char`` likewise with characters.
Per-position NLL (position of the predicted token inside its document) gives the
perplexity-by-position curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..runs import is_hf_folder, load_hf_folder

Mode = str  # "stream" | "window"


@dataclass
class Scorer:
    """A model, its tokenizer and how to run it.

    ``forward(ids (1, T), state) -> (logits (T, V), state)``; ``stateful`` says
    whether the returned state continues the sequence (stream mode).
    """

    forward: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    stateful: bool
    name: str
    device: torch.device = torch.device("cpu")
    bos_id: int | None = None
    """Document separator prepended to every document (None: first token unscored)."""


@dataclass
class LoadedModel:
    """A model loaded for evaluation (``load_model``).

    ``model`` is a transformers causal LM on ``device``, in eval mode: a Hugging Face
    folder's ``AutoModelForCausalLM``, or a checkpoint as ``XLSTMLMForCausalLM`` (its
    ``.model`` is the plain ``XLSTMLM``). ``tokenizer`` is the folder's ``AutoTokenizer``
    (``hf_folder``) or the checkpoint's ``xlstm_lm`` tokenizer; ``run_cfg`` is the
    checkpoint's run config (None for a Hugging Face folder).
    """

    model: Any
    tokenizer: Any
    name: str
    device: torch.device
    hf_folder: bool
    run_cfg: dict[str, Any] | None = None


def load_model(source: str | Path, device: str = "cpu", trust_remote_code: bool = False) -> LoadedModel:
    """The model of a training run dir / checkpoint folder, a DeepSpeed run (consolidated in
    memory), or a Hugging Face model folder (code it carries runs only with
    ``trust_remote_code``; our own exports load with the installed classes: ``runs``)."""
    path = Path(source)
    dev = torch.device(device)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a run dir, a checkpoint folder or an HF model folder")
    if is_hf_folder(path):
        model, tok = load_hf_folder(path, trust_remote_code)
        return LoadedModel(model.to(dev).eval(), tok, f"hf:{path}", dev, True)
    # transformers (behind hf/) is imported when a model is loaded, not with this module
    from ..hf.export import load_checkpoint_as_hf

    hf_model, tokenizer, ckpt, run_cfg = load_checkpoint_as_hf(path)
    return LoadedModel(hf_model.to(dev).eval(), tokenizer, f"checkpoint:{ckpt}", dev, False, run_cfg)


def load_scorer(source: str | Path, device: str = "cpu", trust_remote_code: bool = False) -> Scorer:
    """A scorer for a training run dir / checkpoint folder, a DeepSpeed run (consolidated in
    memory), or a Hugging Face model folder (``load_model``)."""
    loaded = load_model(source, device, trust_remote_code)
    dev = loaded.device
    if loaded.hf_folder:
        # transformers is imported only when a Hugging Face folder is scored
        from ..hf.compat import CACHE_NAME, output_cache

        model, tok = loaded.model, loaded.tokenizer
        stateful = type(model).__name__ == "XLSTMLMForCausalLM"

        def forward(ids, state):
            out = model(input_ids=ids, use_cache=stateful, **{CACHE_NAME: state})
            return out.logits[0].float(), (output_cache(out) if stateful else None)

        sep = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
        return Scorer(
            forward,
            lambda s: tok(s, add_special_tokens=False)["input_ids"],
            lambda ids: tok.decode(ids),
            stateful,
            loaded.name,
            dev,
            sep,
        )
    lm, tokenizer = loaded.model.model, loaded.tokenizer

    def forward(ids, state):
        out = lm(ids, state)
        return out.logits[0].float(), out.state

    return Scorer(forward, tokenizer.encode, lambda ids: tokenizer.decode(ids), True, loaded.name, dev, tokenizer.eos_id)


@dataclass
class PerplexityResult:
    mode: str
    documents: int
    tokens: int
    """Scored tokens."""
    bytes: int
    chars: int
    nll_nats: float
    """Summed negative log-likelihood in nats."""
    loss: float = 0.0
    perplexity: float = 0.0
    bits_per_byte: float = 0.0
    bits_per_char: float = 0.0
    by_position: list[dict[str, float]] = field(default_factory=list)
    """Mean loss and perplexity per position bucket (log-spaced) inside documents."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def document_nll(scorer: Scorer, ids: list[int], mode: Mode, chunk: int, window: int, stride: int) -> np.ndarray:
    """NLL (nats) of tokens 1..n-1 of one document, each predicted from what precedes it."""
    n = len(ids)
    if n < 2:
        return np.zeros(0)
    x = torch.tensor(ids, dtype=torch.long, device=scorer.device)[None]
    out = np.empty(n - 1)
    if mode == "stream":
        if not scorer.stateful:
            raise ValueError(f"{scorer.name} does not carry a recurrent state; use mode='window'")
        state = None
        for s in range(0, n, chunk):
            logits, state = scorer.forward(x[:, s : s + chunk], state)
            logp = F.log_softmax(logits, dim=-1)
            tgt = x[0, s + 1 : s + chunk + 1]
            # predictions inside the chunk: position t predicts t+1
            k = min(logp.shape[0], tgt.shape[0])
            out[s : s + k] = (-logp[:k].gather(1, tgt[:k, None])[:, 0]).cpu().numpy()
        return out
    if mode == "window":
        if window < 2 or not 0 < stride <= window:
            raise ValueError(f"need window >= 2 and stride in 1..window, got window={window}, stride={stride}")
        done = 1  # tokens [1, done) have been scored (token 0 never is)
        begin = 0
        while done < n:
            end = min(begin + window, n)
            logits, _ = scorer.forward(x[:, begin:end], None)
            logp = F.log_softmax(logits, dim=-1)
            # targets done..end-1 are predicted by positions done-1..end-2
            pos = torch.arange(done - 1 - begin, end - 1 - begin, device=logp.device)
            tgt = x[0, done:end]
            out[done - 1 : end - 1] = (-logp[pos].gather(1, tgt[:, None])[:, 0]).cpu().numpy()
            done = end
            # every target keeps at least one token of context inside its window
            begin = min(begin + stride, end - 1)
        return out
    raise ValueError(f"unknown mode {mode!r}; use 'stream' or 'window'")


def position_buckets(max_pos: int) -> list[tuple[int, int]]:
    """Log-spaced [lo, hi) position ranges: 1-2, 2-4, ... up to max_pos."""
    edges = [1]
    while edges[-1] < max_pos:
        edges.append(edges[-1] * 2)
    return list(zip(edges[:-1], edges[1:]))


def evaluate(
    scorer: Scorer,
    texts: Iterable[str],
    mode: Mode = "stream",
    chunk: int = 512,
    window: int = 512,
    stride: int = 256,
    max_tokens: int | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Score every document of ``texts``; see the module docstring for the accounting.

    ``texts`` is iterated once, document by document (a streamed data set is never
    held in memory), in stream mode each document from a fresh state."""
    from tqdm import tqdm

    total_nll, total_tokens, total_bytes, total_chars, ndocs = 0.0, 0, 0, 0, 0
    pos_sum: dict[int, float] = {}
    pos_cnt: dict[int, int] = {}
    total = len(texts) if hasattr(texts, "__len__") else None
    bar = tqdm(texts, total=total, desc=f"{mode} eval", unit="doc", disable=not progress)
    for text in bar:
        ids = scorer.encode(text)
        if max_tokens is not None:
            remaining = max_tokens - total_tokens
            if remaining <= 0:
                break
            if len(ids) - 1 > remaining:
                ids = ids[: remaining + 1]
                text = scorer.decode(ids)
        if scorer.bos_id is not None:
            ids = [scorer.bos_id, *ids]
            skipped = ""
        else:
            skipped = scorer.decode(ids[:1])
        if len(ids) < 2:
            continue
        nll = document_nll(scorer, ids, mode, chunk, window, stride)
        total_nll += float(nll.sum())
        total_tokens += len(nll)
        total_bytes += max(len(text.encode("utf-8")) - len(skipped.encode("utf-8")), 1)
        total_chars += max(len(text) - len(skipped), 1)
        ndocs += 1
        for lo, hi in position_buckets(len(ids)):
            seg = nll[lo - 1 : hi - 1]
            if len(seg):
                pos_sum[lo] = pos_sum.get(lo, 0.0) + float(seg.sum())
                pos_cnt[lo] = pos_cnt.get(lo, 0) + len(seg)
        bar.set_postfix(ppl=f"{math.exp(total_nll / max(total_tokens, 1)):.3f}", tokens=total_tokens)
    if total_tokens == 0:
        raise ValueError("no document had two or more tokens: nothing to score; pass more text")
    loss = total_nll / total_tokens
    by_pos = [
        {"from_position": lo, "to_position": 2 * lo, "tokens": pos_cnt[lo], "loss": pos_sum[lo] / pos_cnt[lo],
         "perplexity": math.exp(pos_sum[lo] / pos_cnt[lo])}
        for lo in sorted(pos_sum)
    ]
    return PerplexityResult(
        mode=mode, documents=ndocs, tokens=total_tokens, bytes=total_bytes, chars=total_chars, nll_nats=total_nll,
        loss=loss, perplexity=math.exp(loss), bits_per_byte=total_nll / math.log(2) / total_bytes,
        bits_per_char=total_nll / math.log(2) / total_chars, by_position=by_pos,
    )


def plot_by_position(results: dict[str, PerplexityResult], path: str | Path) -> None:
    """Perplexity against position inside the document (log x), one line per result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, res in results.items():
        xs = [b["from_position"] for b in res.by_position]
        ys = [b["perplexity"] for b in res.by_position]
        ax.plot(xs, ys, marker="o", label=f"{label} (ppl {res.perplexity:.2f})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("position of the predicted token in its document")
    ax.set_ylabel("perplexity (per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
