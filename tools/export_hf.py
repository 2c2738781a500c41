"""Export a training run or checkpoint as a Hugging Face model folder.

    python tools/export_hf.py runs/tiny hf/tiny                 # latest checkpoint of the run
    python tools/export_hf.py runs/tiny/checkpoints/step_0000600 hf/tiny --dtype bfloat16
    python tools/export_hf.py runs/x7b hf/x7b --format native   # transformers' built-in xLSTM
    python tools/export_hf.py runs/ds hf/ds                     # a DeepSpeed (ZeRO 0-3) run: consolidated first
    python tools/export_hf.py runs/ds hf/ds --tag step_0000100 --tokenizer data/shards

SOURCE is a run dir or checkpoint folder of the single-process trainer, a checkpoint
folder written by tools/zero_to_model.py, or a DeepSpeed run (its run dir, deepspeed/
folder or one tag folder), whose ZeRO partitions are gathered in memory; its tokenizer
is the one saved with the token shards it trained on (config.json's data.shards), or
--tokenizer (a shard folder, a saved tokenizer folder or 'byte') where those moved.

--format remote (default): config.json with auto_map, model.safetensors, the flat
modeling code, tokenizer files, generation_config.json and a model card; loads with
``AutoModelForCausalLM.from_pretrained(OUT_DIR, trust_remote_code=True)`` where
xlstm_lm is not installed. --format native: transformers' own ``model_type: "xlstm"``
(xLSTM-7B layout only; no remote code). The export is verified by reloading it and
comparing logits with the checkpoint's model (skip with --no-verify); a model fine-tuned
on conversations (data.sft) ships its chat template, checked to tokenize a probe
conversation exactly as fine-tuning did.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a run dir (its latest checkpoint is used), a checkpoint folder or a DeepSpeed run")
    p.add_argument("out_dir", help="folder to write (created; must be empty unless --force)")
    p.add_argument("--format", choices=["remote", "native"], default="remote")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast the weights (default: as saved)")
    p.add_argument("--force", action="store_true", help="write into a non-empty out_dir")
    p.add_argument("--no-verify", action="store_true", help="skip reloading the export and comparing logits")
    p.add_argument("--tag", default=None, help="DeepSpeed run: the checkpoint tag (default: latest)")
    p.add_argument("--tokenizer", default=None, help="DeepSpeed run: shard folder, tokenizer folder or 'byte'")
    return p.parse_args(argv)


@torch.no_grad()
def verify(out_dir: Path, reference: torch.nn.Module, vocab_size: int) -> float:
    """Reload ``out_dir`` with the Auto classes and return the max |logit difference|."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True).eval()
    ids = torch.randint(0, vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    ref = reference(ids).logits.float()
    got = loaded(ids).logits.float()
    return float((ref - got).abs().max())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from xlstm_lm.hf.export import (
        ExportError,
        chat_template_problem,
        export_model,
        load_checkpoint_as_hf,
        read_val_metrics,
    )

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        if not args.force:
            print(f"error: {out} is not empty; pass --force to write into it", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    dtype = DTYPES[args.dtype] if args.dtype else None
    try:
        model, tokenizer, ckpt, run_cfg = load_checkpoint_as_hf(args.source, args.tokenizer, args.tag)
        if dtype is not None:
            model = model.to(dtype)
        if args.format == "native":
            from xlstm_lm.convert.hf_native import export_native

            export_native(model.model, out, tokenizer)
            reference = model.model
        else:
            export_model(model, tokenizer, out, run_cfg, read_val_metrics(ckpt), str(ckpt))
            reference = model
    except (ExportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"exported {ckpt} -> {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    if not args.no_verify:
        diff = verify(out, reference, model.config.vocab_size)
        # fp32 parity is exact for the remote code (same modules); the built-in xLSTM
        # uses other kernels, equal to ~1e-6 relative; half precision is looser.
        limit = 1e-3 if model.dtype == torch.float32 else 0.5
        print(f"verified: reloaded logits differ by at most {diff:.2e}")
        if not diff <= limit:
            print(f"error: the exported model's logits differ by {diff:.3e} > {limit}", file=sys.stderr)
            return 1
        if args.format == "remote" and (run_cfg.get("data") or {}).get("sft"):
            problem = chat_template_problem(out, tokenizer, run_cfg)
            if problem is not None:
                # The export is usable; prompts built with apply_chat_template just differ from training's.
                print(f"warning: {problem}", file=sys.stderr)
            else:
                print("verified: apply_chat_template gives the fine-tuning token ids")
    return 0


if __name__ == "__main__":
    sys.exit(main())
