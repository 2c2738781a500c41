"""Perplexity, bits per byte and per-position curves of a model on any text.

    python eval/perplexity.py runs/tiny --text ../shared/data/tinyshakespeare/input.txt
    python eval/perplexity.py hf/tiny --text my_docs/ --mode window --window 512 --stride 256
    python eval/perplexity.py runs/tiny --text book.txt --mode both --plot ppl_by_position.png --out result.json

MODEL is a training run dir or checkpoint folder, or a Hugging Face model folder
(any causal LM in window mode; our models also in stream mode). --text is a file or
a folder of text files (each file one document); without --text the built-in
corpus's held-out tail is used. See xlstm_lm/evaluation/perplexity.py for the
accounting (first token of each document unscored; bytes of the scored text).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlstm_lm.data.corpus import DataError, load_corpus, split_documents  # noqa: E402
from xlstm_lm.evaluation import evaluate, load_scorer, plot_by_position  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="run dir, checkpoint folder or Hugging Face model folder")
    ap.add_argument("--text", default=None, help="text file or folder (default: the built-in corpus's validation split)")
    ap.add_argument("--mode", default="stream", choices=["stream", "window", "both"])
    ap.add_argument("--chunk", type=int, default=512, help="stream mode: tokens per forward call")
    ap.add_argument("--window", type=int, default=512, help="window mode: window length")
    ap.add_argument("--stride", type=int, default=256, help="window mode: stride")
    ap.add_argument("--max-tokens", type=int, default=None, help="stop after scoring this many tokens")
    ap.add_argument("--max-bytes", type=int, default=None, help="read at most this many bytes of text")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--plot", default=None, help="write the perplexity-by-position plot (PNG) here")
    args = ap.parse_args(argv)
    try:
        scorer = load_scorer(args.model, args.device)
        docs = load_corpus(args.text, args.max_bytes)
        if args.text is None:
            docs = split_documents(docs, 0.05)[1]
    except (FileNotFoundError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    modes = ["stream", "window"] if args.mode == "both" else [args.mode]
    results = {}
    for mode in modes:
        res = evaluate(scorer, [d.text for d in docs], mode, args.chunk, args.window, args.stride, args.max_tokens)
        results[mode] = res
        print(
            f"{mode:7s} documents {res.documents}, tokens {res.tokens:,}: loss {res.loss:.4f}, perplexity "
            f"{res.perplexity:.3f}, bits/byte {res.bits_per_byte:.4f}, bits/char {res.bits_per_char:.4f}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"model": scorer.name, **{m: r.to_dict() for m, r in results.items()}}, indent=2))
    if args.plot:
        plot_by_position(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
