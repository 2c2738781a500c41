"""Print a markdown table of the shipped model configs: blocks, parameters, FLOPs.

    python tools/model_table.py [configs/...yaml ...]

Models are built on the meta device, so even the 7B config costs no memory.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlstm_lm.config import ModelConfig  # noqa: E402
from xlstm_lm.config_utils import from_dict, load_yaml  # noqa: E402
from xlstm_lm.models import XLSTMLM  # noqa: E402


def describe(path: str) -> str:
    cfg = from_dict(ModelConfig, load_yaml(path)["model"], "model")
    with torch.device("meta"):
        model = XLSTMLM(cfg)
    kinds = cfg.block_kinds
    counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    blocks = " + ".join(f"{n}x {k}" for k, n in counts.items())
    return (
        f"| `{path}` | {blocks} | {cfg.d_model} | {cfg.vocab_size} | "
        f"{model.num_params() / 1e6:,.1f}M | {model.num_params(exclude_embedding=True) / 1e6:,.1f}M | "
        f"{model.flops_per_token(2048) / 1e6:,.1f} |"
    )


def shipped_model_configs() -> list[str]:
    """Every config under configs/ that defines a model: not the shared bases (``_*.yaml``),
    nor files without a ``model`` section (fine-tuning run configs, whose model comes
    from --init-from, and ``accelerate launch`` files)."""
    paths = sorted(p for p in glob.glob("configs/**/*.yaml", recursive=True) if "/_" not in p)
    return [p for p in paths if isinstance(data := load_yaml(p), dict) and "model" in data]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", help="config files (default: every file under configs/)")
    args = ap.parse_args(argv)
    paths = args.configs or shipped_model_configs()
    print("| config | blocks | d_model | vocab | params | non-embedding | train MFLOP/token @2048 |")
    print("|---|---|---|---|---|---|---|")
    for p in paths:
        print(describe(p))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
