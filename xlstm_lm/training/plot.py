"""Loss and perplexity curves of a run, drawn from its ``metrics.jsonl`` into one PNG.

Used at the end of every run (``MetricsLog.close`` writes ``run_dir/metrics.png``)
and by ``tools/plot_metrics.py``. Both training loops write the same records:
train records (step, loss), val records (step, loss, ppl); records with a ``kind``
(the unigram baseline, skipped bad steps) are drawn as a reference line and marks.

Drawn with matplotlib's object API (``Figure``, which renders PNG through Agg), so
no pyplot state and no global backend switch in the calling process.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class NothingToPlot(ValueError):
    """The metrics file holds no train or val losses yet."""


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (or of ``RUN_DIR/metrics.jsonl`` given a folder)."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".jsonl":
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {path.parent} a training run dir?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ppl(loss: float) -> float:
    # exp overflows past ~709; a loss that high is a diverged model anyway
    return math.exp(min(loss, 700.0))


def plot_metrics(records: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Draw training/validation loss and perplexity vs step into the PNG ``out``.

    Raises ``NothingToPlot`` without train or val losses, ``ImportError`` without matplotlib.
    """
    from matplotlib.figure import Figure

    train = [r for r in records if r.get("split") == "train" and "kind" not in r and r.get("loss") is not None]
    val = [r for r in records if r.get("split") == "val" and "kind" not in r and r.get("loss") is not None]
    bad = [r["step"] for r in records if r.get("kind") == "bad_step"]
    unigram = next((r["ppl"] for r in records if r.get("kind") == "unigram_baseline"), None)
    if not train and not val:
        raise NothingToPlot("the metrics hold no train or val losses yet")

    fig = Figure(figsize=(11, 4))
    ax_loss, ax_ppl = fig.subplots(1, 2)
    if train:
        steps = [r["step"] for r in train]
        ax_loss.plot(steps, [r["loss"] for r in train], label="train", lw=1)
        ax_ppl.plot(steps, [_ppl(r["loss"]) for r in train], lw=1, alpha=0.6, label="train")
    if val:
        steps = [r["step"] for r in val]
        ax_loss.plot(steps, [r["loss"] for r in val], "o-", label="val")
        ax_ppl.plot(steps, [r.get("ppl", _ppl(r["loss"])) for r in val], "o-", label="val")
    if unigram is not None:
        ax_ppl.axhline(unigram, ls="--", color="gray", label="unigram baseline")
    for step in bad:
        ax_loss.axvline(step, color="red", alpha=0.3)
    skipped = f" ({len(bad)} skipped steps in red)" if bad else ""
    ax_loss.set(xlabel="step", ylabel="loss (nats/token)", title="loss" + skipped)
    ax_ppl.set(xlabel="step", ylabel="perplexity", yscale="log", title="perplexity")
    for ax in (ax_loss, ax_ppl):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """``RUN_DIR/metrics.jsonl`` -> ``out`` (default ``RUN_DIR/metrics.png``)."""
    run_dir = Path(run_dir)
    return plot_metrics(read_metrics(run_dir), out or run_dir / "metrics.png", title=str(run_dir))


__all__ = ["NothingToPlot", "plot_metrics", "plot_run", "read_metrics"]
