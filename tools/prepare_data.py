"""Tokenize a corpus once into memory-mapped token shards (see xlstm_lm/data/shards.py).

    python tools/prepare_data.py data/my.jsonl --out data/shards --tokenizer byte
    python tools/prepare_data.py data/parquet_dir --text-field content --tokenizer runs/tok
    python tools/prepare_data.py ../shared/data/wikitext-2 --split train --out data/wt2 --tokenizer runs/tok
    python tools/prepare_data.py HuggingFaceFW/fineweb-edu --config sample-10BT --split train --streaming \\
        --max-docs 100000 --out data/fineweb --tokenizer gpt2

SOURCE is read through ``datasets`` (``xlstm_lm.data.shards.TextSource``), one document
per record (its ``--text-field``): a local file or folder of .txt/.md/.jsonl/.json/
.parquet/.csv files (.txt/.md files are one document each), a builder name with
``--data-files``, or a hub data set name (with ``--config``/``--split``). ``--streaming``
reads the records as they come (no copy in the datasets cache) and the shards are
written as they fill, so memory stays bounded by one shard (``--shard-tokens``) for any
corpus size; without it ``datasets`` first materialises the data set in its cache.
Both give byte-identical shards. ``--tokenizer`` is 'byte', a folder written by
tools/train_tokenizer.py, or a Hugging Face tokenizer name.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlstm_lm.data.corpus import DataError  # noqa: E402
from xlstm_lm.data.shards import TextSource, write_shards  # noqa: E402
from xlstm_lm.data.tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer  # noqa: E402


def iter_texts(source: str, text_field: str, hub: bool, split: str | None) -> Iterator[str]:
    """The documents of ``source``, streamed (what tools/train_tokenizer.py reads); a local
    folder is read whole (``split`` applies to hub data sets only)."""
    texts = TextSource(source, split=split if hub else None, text_field=text_field, streaming=True)
    try:
        texts.check()
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    yield from texts


def get_tokenizer(spec: str):
    if spec == "byte":
        return ByteTokenizer()
    if (Path(spec) / "tokenizer.json").exists():
        return load_tokenizer(spec)
    return HFTokenizer(spec)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a file or folder, a builder name (with --data-files) or a hub data set name")
    ap.add_argument("--out", required=True, help="output folder of shards + manifest.json")
    ap.add_argument("--tokenizer", default="byte")
    ap.add_argument("--text-field", default="text", help="the field holding each record's text")
    ap.add_argument("--config", default=None, help="the hub data set's configuration name")
    ap.add_argument("--split", default=None,
                    help="split to read (hub: default 'train'; a local folder: by file names, default every file)")
    ap.add_argument("--data-files", nargs="+", default=None,
                    help="SOURCE is a builder name (json, parquet, text, csv) reading these files")
    ap.add_argument("--sample-by", default="document", choices=["document", "paragraph", "line"],
                    help="what one document of a text file is")
    ap.add_argument("--streaming", action="store_true", help="stream the records (bounded memory, no cache copy)")
    # older spelling: a name that is not on disk is a hub name anyway
    ap.add_argument("--hub", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", default=None, help="the datasets cache folder (without --streaming)")
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--shard-tokens", type=int, default=1 << 24)
    ap.add_argument("--no-eos", action="store_true", help="do not append the end-of-document id")
    args = ap.parse_args(argv)
    split = args.split
    if split is None and (args.hub or not Path(args.source).expanduser().exists()):
        split = "train"
    texts = TextSource(args.source, args.config, split, args.text_field, args.streaming, args.data_files,
                       args.sample_by, args.max_docs, cache_dir=args.cache_dir)
    try:
        texts.check()
        manifest = write_shards(
            texts, get_tokenizer(args.tokenizer), args.out, args.shard_tokens, not args.no_eos, source=args.source
        )
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    print(
        f"{args.out}: {manifest['documents']:,} documents, {manifest['tokens']:,} tokens in "
        f"{len(manifest['shards'])} shards ({manifest['dtype']}, vocab {manifest['vocab_size']})"
    )
    return manifest


if __name__ == "__main__":
    main()
