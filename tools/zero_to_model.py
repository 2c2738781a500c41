"""Consolidate a DeepSpeed (ZeRO 0-3) run into one model.

    python tools/zero_to_model.py runs/ds runs/ds/consolidated            # a checkpoint folder
    python tools/zero_to_model.py runs/ds/deepspeed model.safetensors --tag step_0000100   # the weights only
    python tools/export_hf.py runs/ds/consolidated hf/ds                  # then: a Hugging Face folder

SOURCE is the run dir of the DeepSpeed loop (or its deepspeed/ folder, or one tag
folder in it). OUT ending in .safetensors: one fp32 weight file with the model's own
parameter names (what ``load_checkpoint_weights`` reads). Any other OUT: a checkpoint
folder as the single-process trainer writes one (model.safetensors, config.yaml from the
run's config.json, tokenizer/ from the shards the run trained on, or --tokenizer), which
tools/export_hf.py, eval/perplexity.py and --init-from read. tools/export_hf.py also
takes the DeepSpeed run directly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlstm_lm.hf.zero import (  # noqa: E402
    ZeroError,
    consolidate_run,
    consolidated_model,
    find_deepspeed_checkpoint,
    read_run_config,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="the DeepSpeed run dir, its deepspeed/ folder or a tag folder")
    ap.add_argument("out", help="a .safetensors file (weights only) or a checkpoint folder to write")
    ap.add_argument("--tag", default=None, help="checkpoint tag (default: latest)")
    ap.add_argument("--tokenizer", default=None,
                    help="checkpoint folder: the tokenizer (shard folder, saved tokenizer folder or 'byte'; "
                         "default: the run's data.shards)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        if out.suffix == ".safetensors":
            from safetensors.torch import save_model

            ckpt = find_deepspeed_checkpoint(args.source, args.tag)
            if ckpt is None:
                raise ZeroError(f"{args.source} is not a DeepSpeed run (no deepspeed/ folder with checkpoints)")
            model = consolidated_model(ckpt, read_run_config(ckpt.run_dir))
            out.parent.mkdir(parents=True, exist_ok=True)
            save_model(model, str(out))
        else:
            if out.exists() and (not out.is_dir() or any(out.iterdir())):
                raise ZeroError(f"{out} exists and is not empty; choose a new folder")
            consolidate_run(args.source, out, args.tag, args.tokenizer)
    except ZeroError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
