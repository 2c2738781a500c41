"""Tokenize a corpus once into memory-mapped token shards (see xlstm_lm/data/shards.py).

    python tools/prepare_data.py data/my.jsonl --out data/shards --tokenizer byte
    python tools/prepare_data.py data/parquet_dir --text-field content --tokenizer runs/tok
    python tools/prepare_data.py HuggingFaceFW/fineweb-edu --hub --split train --max-docs 100000 ...

Local inputs (a file or a folder of .txt/.md/.jsonl/.json/.parquet files) are read
through ``datasets`` in streaming mode: .txt/.md files are one document each, JSONL and
Parquet rows one document each (``--text-field``). ``--hub`` streams a hub data set.
``--tokenizer`` is 'byte', a folder written by tools/train_tokenizer.py, or a Hugging
Face tokenizer name.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlstm_lm.data.shards import write_shards  # noqa: E402
from xlstm_lm.data.tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer  # noqa: E402

BUILDERS = {".txt": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def local_files(path: Path) -> dict[str, list[str]]:
    """Files under ``path`` grouped by datasets builder, in sorted order."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    groups: dict[str, list[str]] = {}
    for f in files:
        builder = BUILDERS.get(f.suffix.lower())
        if builder is not None and not any(part.startswith(".") for part in f.parts):
            groups.setdefault(builder, []).append(str(f))
    if not groups:
        raise SystemExit(f"no .txt/.md/.jsonl/.json/.parquet files under {path}")
    return groups


def iter_texts(source: str, text_field: str, hub: bool, split: str) -> Iterator[str]:
    import datasets

    if hub:
        yield from (row[text_field] for row in datasets.load_dataset(source, split=split, streaming=True))
        return
    for builder, files in local_files(Path(source)).items():
        kw = {"sample_by": "document"} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **kw)
        field = "text" if builder == "text" else text_field
        for row in ds:
            if field not in row:
                raise SystemExit(f"rows of {files[0]} have no field {field!r} (fields: {sorted(row)}); pass --text-field")
            yield row[field]


def get_tokenizer(spec: str):
    if spec == "byte":
        return ByteTokenizer()
    if (Path(spec) / "tokenizer.json").exists():
        return load_tokenizer(spec)
    return HFTokenizer(spec)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a file, a folder, or (with --hub) a hub data set name")
    ap.add_argument("--out", required=True, help="output folder of shards + manifest.json")
    ap.add_argument("--tokenizer", default="byte")
    ap.add_argument("--text-field", default="text")
    ap.add_argument("--hub", action="store_true", help="stream a Hugging Face hub data set")
    ap.add_argument("--split", default="train")
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--shard-tokens", type=int, default=1 << 24)
    ap.add_argument("--no-eos", action="store_true", help="do not append the end-of-document id")
    args = ap.parse_args(argv)
    texts = iter_texts(args.source, args.text_field, args.hub, args.split)
    if args.max_docs is not None:
        texts = itertools.islice(texts, args.max_docs)
    manifest = write_shards(
        texts, get_tokenizer(args.tokenizer), args.out, args.shard_tokens, not args.no_eos, source=args.source
    )
    print(
        f"{args.out}: {manifest['documents']:,} documents, {manifest['tokens']:,} tokens in "
        f"{len(manifest['shards'])} shards ({manifest['dtype']}, vocab {manifest['vocab_size']})"
    )
    return manifest


if __name__ == "__main__":
    main()
