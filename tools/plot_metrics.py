"""Loss and perplexity curves of a training run, as one PNG.

    python tools/plot_metrics.py runs/tiny            # -> runs/tiny/metrics.png
    python tools/plot_metrics.py RUN_DIR --out curve.png

Every run already writes ``RUN_DIR/metrics.png`` when it ends; this redraws it, e.g.
while a run is still going. Reads ``RUN_DIR/metrics.jsonl`` (both training loops
write it); the drawing is ``xlstm_lm.training.plot``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlstm_lm.training.plot import NothingToPlot, plot_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="PNG path (default: RUN_DIR/metrics.png)")
    args = ap.parse_args(argv)
    try:
        out = plot_run(args.run_dir, args.out)
    except (FileNotFoundError, NothingToPlot) as e:
        raise SystemExit(f"error: {e}") from None
    except ImportError as e:
        raise SystemExit(f"error: matplotlib is needed to plot ({e}); pip install matplotlib") from None
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
