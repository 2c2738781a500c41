"""Perplexity, bits per byte and per-position curves of a model on any text.

    python eval/perplexity.py runs/tiny --text ../shared/data/tinyshakespeare/input.txt
    python eval/perplexity.py hf/tiny --text my_docs/ --mode window --window 512 --stride 256
    python eval/perplexity.py runs/tiny --text book.txt --mode both --plot ppl_by_position.png --out result.json
    python eval/perplexity.py hf/tiny --dataset ../shared/data/wikitext-2 --split test
    python eval/perplexity.py runs/tiny --dataset docs.jsonl --text-field content --max-docs 100
    python eval/perplexity.py hf/tiny --dataset json --data-files a.jsonl b.jsonl --streaming
    python eval/perplexity.py hf/tiny --dataset wikitext --dataset-config wikitext-2-raw-v1 --split test --streaming

MODEL is a training run dir or checkpoint folder, a DeepSpeed run dir, or a Hugging
Face model folder (any causal LM in window mode; our models also in stream mode).

Text: --text is a file or a folder of text files (each file one document). --dataset
reads anything ``datasets.load_dataset`` reads, one document per record (its
--text-field): a local file or folder of .txt/.md/.jsonl/.json/.parquet/.csv files
(offline; text files are one document each, --sample-by to split them; a folder
whose file names name splits, e.g. wikitext-2/{train,valid,test}.txt, needs --split),
a builder name with --data-files, or a hub name (with --dataset-config; needs the
network). --streaming reads the records as they come instead of materialising the
data set in the datasets cache first. Without --text and --dataset the built-in
corpus's held-out tail is used. See xlstm_lm/evaluation/perplexity.py for the
accounting (every token scored after the end-of-document token, or the first one
unscored; bytes of the scored text).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlstm_lm.data.corpus import DataError, load_corpus, split_documents  # noqa: E402
from xlstm_lm.data.shards import TextSource  # noqa: E402
from xlstm_lm.evaluation import evaluate, load_scorer, plot_by_position  # noqa: E402
from xlstm_lm.training.checkpoint import CheckpointError  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="run dir, checkpoint folder, DeepSpeed run dir or Hugging Face model folder")
    text = ap.add_mutually_exclusive_group()
    text.add_argument("--text", default=None,
                      help="text file or folder (default: the built-in corpus's validation split)")
    text.add_argument("--dataset", default=None, metavar="NAME_OR_PATH",
                      help="a datasets source: local file/folder, builder name with --data-files, or hub name")
    ap.add_argument("--dataset-config", default=None, help="--dataset: the hub data set's configuration name")
    ap.add_argument("--split", default=None, help="--dataset: the split (a local folder: by file names)")
    ap.add_argument("--text-field", default="text", help="--dataset: the field holding each record's text")
    ap.add_argument("--data-files", nargs="+", default=None, help="--dataset BUILDER: the files it reads")
    ap.add_argument("--sample-by", default="document", choices=["document", "paragraph", "line"],
                    help="--dataset: what one document of a text file is")
    ap.add_argument("--streaming", action="store_true", help="--dataset: stream the records (no cache copy)")
    ap.add_argument("--max-docs", type=int, default=None, help="--dataset: read at most this many records")
    ap.add_argument("--cache-dir", default=None, help="--dataset: the datasets cache folder")
    ap.add_argument("--mode", default="stream", choices=["stream", "window", "both"])
    ap.add_argument("--chunk", type=int, default=512, help="stream mode: tokens per forward call")
    ap.add_argument("--window", type=int, default=512, help="window mode: window length")
    ap.add_argument("--stride", type=int, default=256, help="window mode: stride")
    ap.add_argument("--max-tokens", type=int, default=None, help="stop after scoring this many tokens")
    ap.add_argument("--max-bytes", type=int, default=None, help="read at most this many bytes of text")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--trust-remote-code", action="store_true",
                    help="let a Hugging Face folder of another model type run the Python code it carries")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--plot", default=None, help="write the perplexity-by-position plot (PNG) here")
    args = ap.parse_args(argv)
    dataset_only = (args.data_files, args.dataset_config, args.split, args.streaming, args.max_docs)
    if args.dataset is None and any(x is not None and x is not False for x in dataset_only):
        ap.error("--data-files, --dataset-config, --split, --streaming and --max-docs go with --dataset")
    try:
        if args.dataset is not None:
            # Opened and checked before the model loads: a wrong field or split fails fast.
            texts = TextSource(
                args.dataset, args.dataset_config, args.split, args.text_field, args.streaming, args.data_files,
                args.sample_by, args.max_docs, args.max_bytes, args.cache_dir,
            )
            texts.check()
        else:
            docs = load_corpus(args.text, args.max_bytes, flag="--text")
            if args.text is None:
                docs = split_documents(docs, 0.05)[1]
            texts = [d.text for d in docs]
        scorer = load_scorer(args.model, args.device, args.trust_remote_code)
    except (FileNotFoundError, DataError, ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    modes = ["stream", "window"] if args.mode == "both" else [args.mode]
    results = {}
    for mode in modes:
        try:
            res = evaluate(scorer, texts, mode, args.chunk, args.window, args.stride, args.max_tokens)
        except (DataError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
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
