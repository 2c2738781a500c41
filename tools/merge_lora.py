"""Merge the LoRA adapters of a run into its weights and write a plain checkpoint (or HF folder).

    python tools/merge_lora.py runs/sft_lora merged/                 # merged checkpoint folder
    python tools/merge_lora.py runs/sft_lora merged/ --hf hf/sft     # ... and export it for transformers

The merged folder (model.safetensors, config.yaml without train.lora, tokenizer/) is
what ``tools/export_hf.py`` and ``train.py --init-from`` take. The merge is checked:
the merged model's logits must equal the adapted model's (float32).
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a LoRA run dir (its latest checkpoint) or checkpoint folder")
    p.add_argument("out_dir", help="folder for the merged checkpoint")
    p.add_argument("--hf", default=None, help="also export the merged checkpoint as a Hugging Face folder here")
    args = p.parse_args(argv)
    from xlstm_lm.config_utils import ConfigError
    from xlstm_lm.hf.export import export_checkpoint, load_checkpoint_as_hf
    from xlstm_lm.training.checkpoint import CheckpointError
    from xlstm_lm.training.lora import load_lora_checkpoint, merge_lora_checkpoint

    try:
        adapted, run_cfg, ckpt = load_lora_checkpoint(args.source)
        out = merge_lora_checkpoint(ckpt, args.out_dir)
        merged = load_checkpoint_as_hf(out)[0]
        ids = torch.randint(0, run_cfg["model"]["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = float((adapted(ids).logits - merged(ids).logits).abs().max())
        print(f"merged {ckpt} -> {out} (logits differ from the adapted model by {diff:.2e})")
        if not diff <= 1e-4:
            print(f"error: the merged model's logits differ by {diff:.3e}", file=sys.stderr)
            return 1
        if args.hf:
            export_checkpoint(out, args.hf)
            print(f"exported -> {args.hf}")
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
