"""Exact-match accuracy of a fine-tuned model on held-out instruction examples.

    python eval/sft_accuracy.py runs/tiny_sft heldout.jsonl
    python eval/sft_accuracy.py hf/tiny_sft heldout.jsonl --show 5 --out results.json
    python eval/sft_accuracy.py runs/tiny heldout.jsonl --chat-template simple --limit 100

MODEL is a training run dir or checkpoint folder, a DeepSpeed run dir, or a Hugging
Face folder from tools/export_hf.py (loaded as eval/perplexity.py loads it). DATA is
JSONL as data.sft reads it: {"prompt", "response"} rows or {"messages": [...]} rows,
whose last assistant message is the reference answer and everything before it the
prompt. Each prompt is built as fine-tuning built it: a run dir or checkpoint uses
the run's data.sft.chat_template (a run without data.sft, e.g. the base model of a
fine-tuning: 'auto', which is what a fine-tuning with chat_template auto uses;
--chat-template overrides), a Hugging Face folder its exported chat template. The
model answers greedily up to its end-of-document token; an answer is correct when it
equals the reference, both stripped of surrounding whitespace. A LoRA run is
evaluated after tools/merge_lora.py. See xlstm_lm/evaluation/sft_accuracy.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlstm_lm.data.corpus import DataError  # noqa: E402
from xlstm_lm.evaluation import load_model  # noqa: E402
from xlstm_lm.evaluation.sft_accuracy import SLACK_TOKENS, load_examples, sft_accuracy  # noqa: E402
from xlstm_lm.training.checkpoint import CONFIG_FILE, CheckpointError, load_checkpoint_config, resolve_checkpoint  # noqa: E402


def _short(text: str, n: int = 60) -> str:
    text = json.dumps(text, ensure_ascii=False)
    return text if len(text) <= n else text[: n - 3] + "..."


def lora_problem(model: str) -> str | None:
    """Why MODEL cannot be evaluated as it is: a LoRA run (adapters not merged), else None."""
    try:
        ckpt = resolve_checkpoint(model)
    except CheckpointError:
        return None  # not a run dir or checkpoint: load_model says what it is
    if (ckpt / CONFIG_FILE).is_file() and ((load_checkpoint_config(ckpt) or {}).get("train") or {}).get("lora"):
        return (f"{ckpt} is a LoRA checkpoint (train.lora): merge its adapters first, "
                f"python tools/merge_lora.py {model} MERGED_DIR, and evaluate MERGED_DIR")
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="run dir, checkpoint folder, DeepSpeed run dir or exported Hugging Face folder")
    ap.add_argument("data", help="JSONL file of prompt/response or messages rows")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help=f"answer length limit in tokens (default: the longest reference's + {SLACK_TOKENS})")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows")
    ap.add_argument("--batch-size", type=int, default=32, help="prompts decoded together (left-padded)")
    ap.add_argument("--trust-remote-code", action="store_true",
                    help="let a Hugging Face folder of another model type run the Python code it carries")
    ap.add_argument("--chat-template", default=None, choices=["auto", "simple", "plain", "hf"],
                    help="run dir / checkpoint only: override the run's data.sft.chat_template")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="write the results (every row) as JSON here")
    ap.add_argument("--show", type=int, default=3, metavar="K", help="print the first K rows (default 3)")
    args = ap.parse_args(argv)
    for name in ("max_new_tokens", "limit", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    try:
        load_examples(args.data, args.limit)  # a bad data file fails before the model loads
        problem = lora_problem(args.model) if Path(args.model).exists() else None
        if problem:
            raise DataError(problem)
        loaded = load_model(args.model, args.device, args.trust_remote_code)
        res = sft_accuracy(loaded, args.data, args.max_new_tokens, args.limit, args.batch_size, args.chat_template)
    except (FileNotFoundError, DataError, ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model {res.model}")
    print(f"data {res.data}: {res.examples} examples, chat template {res.chat_template}, "
          f"greedy, max_new_tokens {res.max_new_tokens}")
    for r in res.rows[: args.show]:
        mark = "ok  " if r["correct"] else "MISS"
        print(f"  {mark} prompt {_short(r['prompt'])}  reference {_short(r['reference'], 40)}  "
              f"answer {_short(r['answer'], 40)}{'' if r['stopped'] else ' (no eos)'}")
    print(f"exact match {res.correct}/{res.examples} = {res.accuracy:.4f}  "
          f"({res.no_eos} answers without eos; {res.seconds:.1f} s generating)")
    if args.out:
        Path(args.out).write_text(json.dumps(res.to_dict(), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
