"""Consolidate a DeepSpeed (ZeRO 0-3) checkpoint into one model file that
tools/export_hf.py and ``load_checkpoint_weights`` read.

    python tools/zero_to_model.py runs/ds/deepspeed runs/ds/model.safetensors [--tag step_0000100]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlstm_lm.training.distributed import consolidate  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt_dir", help="the run's deepspeed/ folder (holds 'latest')")
    ap.add_argument("out", help="output .safetensors file")
    ap.add_argument("--tag", default=None, help="checkpoint tag (default: latest)")
    args = ap.parse_args()
    print(consolidate(args.ckpt_dir, args.out, args.tag))
