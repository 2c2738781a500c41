"""Corpus loading, train/val split, tokenizers, token windows, config resolution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xlstm_lm.config_utils import ConfigError
from xlstm_lm.data import (
    ByteTokenizer,
    DataError,
    Document,
    HFTokenizer,
    SentencePieceTokenizer,
    TrainWindows,
    load_corpus,
    load_tokenizer,
    split_documents,
    tokenize_splits,
    unigram_perplexity,
    val_windows,
)
from xlstm_lm.data.corpus import stdlib_dir
from xlstm_lm.training.config import RunConfig, build_run_config, resolve_vocab_size, vocab_size_is_explicit
from xlstm_lm.training.optim import lr_at, param_groups

TRICKY_TEXT = "def f(x):\n\treturn  x  # héllo wörld ✓ 😀\n\n    indented\r\nend"


# --- corpus -----------------------------------------------------------------------


def test_default_corpus_is_the_stdlib_capped_and_deterministic():
    docs = load_corpus(None, max_bytes=50_000)
    assert docs and all(d.name.endswith(".py") for d in docs)
    assert [d.name for d in docs] == sorted(d.name for d in docs)
    assert sum(len(d.text.encode()) for d in docs) == 50_000
    assert (stdlib_dir() / docs[0].name).is_file()
    assert load_corpus(None, max_bytes=50_000) == docs


def test_folder_reading_rule(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b.md").write_text("bee")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / "sub" / "c.py").write_text("see")
    (tmp_path / "data.json").write_text('{"no": 1}')
    (tmp_path / ".hidden" / "x.txt").write_text("hidden")
    (tmp_path / "empty.txt").write_text("")
    docs = load_corpus(tmp_path)
    assert [(d.name, d.text) for d in docs] == [("a.txt", "ay"), ("b.md", "bee"), ("sub/c.py", "see")]
    # max_bytes cuts inside a document, never inside a UTF-8 character.
    (tmp_path / "a.txt").write_text("aé")
    assert [d.text for d in load_corpus(tmp_path, max_bytes=2)] == ["a"]


def test_corpus_errors_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data"):
        load_corpus(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="0 bytes"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.json").write_text("{}")
    with pytest.raises(DataError, match=r"no text files.*\*\.txt"):
        load_corpus(tmp_path / "folder")
    (tmp_path / "bin.txt").write_bytes(b"ok\xff\xfe")
    with pytest.raises(DataError, match="not UTF-8.*offset 2"):
        load_corpus(tmp_path / "bin.txt")


def test_split_at_document_boundary_or_inside_one():
    docs = [Document(f"d{i}", "x" * 100) for i in range(10)]
    train, val = split_documents(docs, 0.2)
    assert [d.name for d in val] == ["d8", "d9"] and len(train) == 8
    one = [Document("book", "".join(f"line {i}\n" for i in range(200)))]
    train, val = split_documents(one, 0.1)
    assert train[0].text + val[0].text == one[0].text
    assert val[0].text.startswith("line ") and train[0].text.endswith("\n")
    assert abs(len(val[0].text) / len(one[0].text) - 0.1) < 0.02
    with pytest.raises(DataError, match="too small"):
        split_documents([Document("a", "x")], 0.5)


# --- tokenizers ---------------------------------------------------------------------


def test_byte_tokenizer_round_trip(tmp_path):
    tok = ByteTokenizer()
    ids = tok.encode(TRICKY_TEXT)
    assert tok.vocab_size == 256 and max(ids) < 256 and len(ids) == len(TRICKY_TEXT.encode())
    assert tok.decode(ids) == TRICKY_TEXT
    tok.save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)


def test_sentencepiece_trained_on_tiny_text_round_trips(tmp_path):
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "return", "self", "forward"]
    text = "".join(f"    {words[i % 11]} {words[(3 * i) % 11]}({words[(7 * i) % 11]}, {i})\n" for i in range(300))
    tok = SentencePieceTokenizer.train([text], vocab_size=400)
    assert 259 < tok.vocab_size <= 400 and tok.eos_id is not None
    # Unseen characters fall back to bytes; whitespace and newlines survive exactly.
    for s in (text, TRICKY_TEXT):
        assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode(text)) < len(text.encode()) / 2
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded.encode(TRICKY_TEXT) == tok.encode(TRICKY_TEXT)
    assert loaded.fingerprint() == tok.fingerprint()


def test_hf_tokenizer_from_local_folder(tmp_path):
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(["hello world, hello tokenizer"] * 20, trainer)
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>").save_pretrained(tmp_path / "src")
    tok = HFTokenizer(str(tmp_path / "src"))
    assert tok.eos_id == 0 and tok.vocab_size > 256
    assert tok.decode(tok.encode(TRICKY_TEXT)) == TRICKY_TEXT
    tok.save(tmp_path / "saved")
    loaded = load_tokenizer(tmp_path / "saved")
    assert loaded.encode("hello world") == tok.encode("hello world")
    assert loaded.fingerprint() == tok.fingerprint()


def test_unknown_tokenizer_name_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="neither 'byte', 'sentencepiece' nor a loadable"):
        HFTokenizer(str(tmp_path / "no_such_tokenizer"))


# --- token streams ------------------------------------------------------------------


def test_tokenize_splits_is_cached(tmp_path):
    train_docs, val_docs = [Document("a", "hello"), Document("b", "world")], [Document("c", "val!")]
    tok = ByteTokenizer()
    first = tokenize_splits(train_docs, val_docs, tok, tmp_path)
    assert not first.from_cache
    # Each document ends with eos (byte 0 for the byte tokenizer).
    assert first.train.tolist() == list(b"hello") + [0] + list(b"world") + [0]
    second = tokenize_splits(train_docs, val_docs, tok, tmp_path)
    assert second.from_cache and np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)
    third = tokenize_splits(train_docs, [Document("c", "other")], tok, tmp_path)
    assert not third.from_cache


def test_train_windows_resume_the_same_sequence():
    tokens = np.arange(1000, dtype=np.uint16)
    a = TrainWindows(tokens, seq_len=16, batch_size=4, seed=3)
    first = a.next_batch()
    assert first.shape == (4, 17) and first.dtype == torch.long
    # Windows are contiguous slices of the stream.
    assert torch.equal(first[:, 1:] - first[:, :-1], torch.ones(4, 16, dtype=torch.long))
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(3)]
    b = TrainWindows(tokens, seq_len=16, batch_size=4, seed=3)
    b.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(expected, [b.next_batch() for _ in range(3)]))


def test_val_windows_fixed_and_too_short_is_an_error():
    tokens = np.arange(101, dtype=np.uint16)
    w = val_windows(tokens, seq_len=10, max_windows=100)
    assert w.shape == (10, 11) and w[0, 0] == 0 and w[-1, -1] == 100
    assert val_windows(tokens, seq_len=10, max_windows=3)[:, 0].tolist() == [0, 40, 90]
    with pytest.raises(DataError, match=r"validation split has 20 tokens but one window needs .* = 33.*bytes"):
        val_windows(tokens[:20], seq_len=32, max_windows=4, text_bytes=20, val_fraction=0.1)


def test_unigram_perplexity():
    uniform = np.arange(8).repeat(100)
    assert unigram_perplexity(uniform, np.arange(8), 8) == pytest.approx(8.0)
    # Add-one smoothing: an unseen token gets probability 1 / (N + V).
    assert unigram_perplexity(np.zeros(6, dtype=np.int64), np.array([1]), 4) == pytest.approx(10.0)


# --- config resolution and optimisation -----------------------------------------------


def test_vocab_size_follows_tokenizer_unless_set():
    cfg = build_run_config({})
    assert resolve_vocab_size(cfg, 1024, vocab_size_is_explicit({})).model.vocab_size == 1024
    raw = {"model": {"vocab_size": 256}}
    assert not vocab_size_is_explicit(raw)
    raw = {"model": {"vocab_size": 2048}}
    assert resolve_vocab_size(build_run_config(raw), 1024, vocab_size_is_explicit(raw)).model.vocab_size == 2048
    raw = {"model": {"vocab_size": 500}}
    with pytest.raises(ConfigError, match=r"model.vocab_size=500 is smaller than .* 1024 .*set model.vocab_size=1024"):
        resolve_vocab_size(build_run_config(raw), 1024, vocab_size_is_explicit(raw))


@pytest.mark.parametrize(
    "raw, message",
    [
        pytest.param({"train": {"seq_len": 0}}, "train.seq_len must be positive", id="seq_len-0"),
        pytest.param({"train": {"min_lr": 1.0}}, "train.min_lr must be in", id="min_lr-above-lr"),
        pytest.param({"train": {"schedule": "exp"}}, "train.schedule", id="bad-schedule"),
        pytest.param({"data": {"val_fraction": 1.0}}, "data.val_fraction", id="val_fraction-1"),
        pytest.param({"data": {"colour": 1}}, "unknown config key data.colour", id="unknown-key"),
    ],
)
def test_bad_config_values(raw, message):
    with pytest.raises(ConfigError, match=message):
        build_run_config(raw)


def test_lr_schedule():
    cfg = build_run_config({"train": {"max_steps": 100, "warmup_steps": 10, "lr": 1.0, "min_lr": 0.1}}).train
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1) and 0.1 < lr_at(55, cfg) < 1.0
    lin = build_run_config({"train": {"max_steps": 100, "warmup_steps": 0, "lr": 1.0, "min_lr": 0.0, "schedule": "linear"}}).train
    assert lr_at(50, lin) == pytest.approx(0.5)
    const = build_run_config({"train": {"warmup_steps": 0, "schedule": "constant"}}).train
    assert lr_at(500, const) == const.lr


def test_no_weight_decay_on_embeddings_norms_biases():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 10))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([10, 4])]
    assert decay["params"][0] is model[2].weight
    assert len(no_decay["params"]) == 4
    assert math.isclose(sum(p.numel() for g in (decay, no_decay) for p in g["params"]), sum(p.numel() for p in model.parameters()))


def test_run_config_round_trips_through_dict():
    from xlstm_lm.config_utils import to_dict

    cfg = build_run_config({"train": {"betas": [0.8, 0.9]}, "data": {"tokenizer": "sentencepiece"}})
    assert build_run_config(to_dict(cfg)) == cfg
    assert isinstance(cfg, RunConfig)
