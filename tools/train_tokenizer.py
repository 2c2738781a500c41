"""Train a sentencepiece tokenizer and save it where the trainer, tools/prepare_data.py
and the HF exporter read tokenizers (``load_tokenizer(out)``).

    python tools/train_tokenizer.py corpus_dir --out runs/tok --vocab-size 8192 --special "<|user|>" "<|assistant|>"
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlstm_lm.data.tokenizers import SentencePieceTokenizer  # noqa: E402


def train_sentencepiece(texts, vocab_size: int, byte_fallback: bool = True, special: list[str] = (), max_sentences: int = 1_000_000):
    import sentencepiece as spm

    lines = [line for t in texts for line in t.splitlines() if line.strip()]
    if not lines:
        raise SystemExit("the input has no non-blank lines to train on")
    model = io.BytesIO()
    spm.set_random_generator_seed(0)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        byte_fallback=byte_fallback, user_defined_symbols=list(special), normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False, allow_whitespace_only_pieces=True,
        split_digits=True, character_coverage=0.9995, hard_vocab_limit=False,
        input_sentence_size=max_sentences, shuffle_input_sentence=True, num_threads=2, minloglevel=2,
    )
    return SentencePieceTokenizer(model.getvalue())


def main(argv: list[str] | None = None):
    from tools.prepare_data import iter_texts

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a file or folder (.txt/.md/.jsonl/.parquet)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--text-field", default="text")
    ap.add_argument("--no-byte-fallback", action="store_true")
    ap.add_argument("--special", nargs="*", default=[], help="extra special tokens kept whole")
    args = ap.parse_args(argv)
    tok = train_sentencepiece(
        iter_texts(args.source, args.text_field, False, "train"), args.vocab_size, not args.no_byte_fallback, args.special
    )
    tok.save(args.out)
    print(f"{args.out}: sentencepiece, vocab {tok.vocab_size}")
    return tok


if __name__ == "__main__":
    main()
