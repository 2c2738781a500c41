"""Training data: corpus loading (built-in or user text), tokenizers, token windows."""

from .corpus import DEFAULT_MAX_BYTES, TEXT_SUFFIXES, DataError, Document, load_corpus, split_documents
from .dataset import TokenSplits, TrainWindows, tokenize_splits, unigram_perplexity, val_windows
from .tokenizers import ByteTokenizer, HFTokenizer, SentencePieceTokenizer, Tokenizer, build_tokenizer, load_tokenizer

__all__ = [
    "DEFAULT_MAX_BYTES",
    "TEXT_SUFFIXES",
    "ByteTokenizer",
    "DataError",
    "Document",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "TokenSplits",
    "Tokenizer",
    "TrainWindows",
    "build_tokenizer",
    "load_corpus",
    "load_tokenizer",
    "split_documents",
    "tokenize_splits",
    "unigram_perplexity",
    "val_windows",
]
