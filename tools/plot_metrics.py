"""Loss and perplexity curves of a training run, as one PNG.

    python tools/plot_metrics.py runs/tiny            # -> runs/tiny/metrics.png
    python tools/plot_metrics.py RUN_DIR --out curve.png

Reads ``RUN_DIR/metrics.jsonl``, written by the single-process trainer and by the
DeepSpeed loop alike: train records (step, loss) and val records (step, loss, ppl);
other records (the unigram baseline, skipped bad steps) are drawn as a reference
line and as marks.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; is {run_dir} a training run dir?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(run_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if r.get("split") == "train" and "kind" not in r and r.get("loss") is not None]
    val = [r for r in records if r.get("split") == "val" and "kind" not in r]
    bad = [r["step"] for r in records if r.get("kind") == "bad_step"]
    unigram = next((r["ppl"] for r in records if r.get("kind") == "unigram_baseline"), None)
    if not train and not val:
        raise SystemExit(f"error: {run_dir / 'metrics.jsonl'} holds no train or val losses yet")
    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=1)
    if val:
        ax_loss.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val")
        ax_ppl.plot([r["step"] for r in val], [r.get("ppl", math.exp(min(r["loss"], 700))) for r in val], "o-", label="val")
    if train:
        ax_ppl.plot([r["step"] for r in train], [math.exp(min(r["loss"], 700)) for r in train], lw=1, alpha=0.6, label="train")
    if unigram is not None:
        ax_ppl.axhline(unigram, ls="--", color="gray", label="unigram baseline")
    for step in bad:
        ax_loss.axvline(step, color="red", alpha=0.3)
    ax_loss.set(xlabel="step", ylabel="loss (nats/token)", title="loss" + (f" ({len(bad)} skipped steps in red)" if bad else ""))
    ax_ppl.set(xlabel="step", ylabel="perplexity", yscale="log", title="perplexity")
    for ax in (ax_loss, ax_ppl):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="PNG path (default: RUN_DIR/metrics.png)")
    args = ap.parse_args(argv)
    out = plot(args.run_dir, args.out or args.run_dir / "metrics.png")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
