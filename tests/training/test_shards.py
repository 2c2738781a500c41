"""Token shards and the packed loader: round trip, determinism, rank disjointness."""

from __future__ import annotations

import json

import pytest
import torch

from tools.prepare_data import main as prepare_data
from tools.train_tokenizer import main as train_tokenizer
from xlstm_lm.data.shards import PackedLoader, TokenShards
from xlstm_lm.data.tokenizers import ByteTokenizer

DOCS = [f"document {i}: " + "héllo wörld " * (i % 7 + 1) + f"end {i}\n" for i in range(60)]


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """The same documents as JSONL (field 'content'), Parquet and a folder of .txt files;
    the datasets cache (non-streaming reads) under tmp_path."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")

    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"content": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    pq.write_table(pa.table({"content": DOCS}), tmp_path / "docs.parquet")
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, d in enumerate(DOCS):
        (folder / f"{i:03d}.txt").write_text(d)
    return tmp_path


@pytest.mark.parametrize("source", ["docs.jsonl", "docs.parquet", "txt"])
def test_shards_round_trip_to_the_text(corpus, source):
    out = corpus / f"shards-{source}"
    # small shards so documents spread over several files
    manifest = prepare_data([str(corpus / source), "--out", str(out), "--text-field", "content", "--shard-tokens", "500"])
    assert manifest["documents"] == len(DOCS) and len(manifest["shards"]) > 2 and manifest["dtype"] == "uint16"
    shards = TokenShards.open(out)
    tok = shards.tokenizer()
    texts = [tok.decode(d[:-1].tolist()) for d in shards.documents()]
    assert all(int(d[-1]) == tok.eos_id for d in shards.documents())
    assert texts == DOCS


def test_sentencepiece_tokenizer_with_specials_round_trips(corpus):
    tok_dir = corpus / "tok"
    tok = train_tokenizer([str(corpus / "docs.jsonl"), "--out", str(tok_dir), "--text-field", "content",
                           "--vocab-size", "320", "--special", "<|sep|>"])
    assert tok.decode(tok.encode("héllo <|sep|> ✓")) == "héllo <|sep|> ✓"
    assert len(tok.encode("<|sep|>")) == 1
    out = corpus / "sp-shards"
    prepare_data([str(corpus / "docs.jsonl"), "--out", str(out), "--text-field", "content", "--tokenizer", str(tok_dir)])
    shards = TokenShards.open(out)
    assert [shards.tokenizer().decode(d[:-1].tolist()) for d in shards.documents()] == DOCS


def _byte_shards(tmp_path):
    from xlstm_lm.data.shards import write_shards

    write_shards(DOCS, ByteTokenizer(), tmp_path / "s", shard_tokens=300)
    return TokenShards.open(tmp_path / "s")


def test_loader_is_deterministic_resumable_and_flags_document_starts(tmp_path):
    shards = _byte_shards(tmp_path)
    a = PackedLoader(shards, seq_len=32, batch_size=4, seed=3)
    first = [a.next_batch() for _ in range(5)]
    b = PackedLoader(shards, seq_len=32, batch_size=4, seed=3)
    for _ in range(2):
        b.next_batch()
    c = PackedLoader(shards, seq_len=32, batch_size=4, seed=3)
    c.load_state_dict(b.state_dict())
    for want in first[2:]:
        got = c.next_batch()
        assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.reset, want.reset)
        assert torch.equal(got.labels, want.labels)
    batch = first[0]
    # reset flags sit exactly on tokens that follow an end-of-document id (0 for bytes)
    assert torch.equal(batch.reset[:, 1:], batch.input_ids[:, :-1] == 0)
    # a document's first token is never a target of the previous document's last token
    assert torch.all(batch.labels[batch.input_ids == 0] == -100)


def test_ranks_read_disjoint_slices_whose_union_is_the_single_process_batch(tmp_path):
    shards = _byte_shards(tmp_path)
    T = 32
    single = PackedLoader(shards, seq_len=T, batch_size=6, seed=0)
    ranks = [PackedLoader(shards, seq_len=T, batch_size=3, seed=0, rank=r, world_size=2) for r in range(2)]
    seen: set[int] = set()
    for _ in range(single.batches_per_epoch):
        whole = single.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(torch.cat([p.input_ids for p in parts]), whole.input_ids)
        for p in parts:
            assert seen.isdisjoint(p.rows.tolist())
            seen.update(p.rows.tolist())
    assert len(seen) == single.batches_per_epoch * 6


@pytest.mark.parametrize("source", ["docs.jsonl", "docs.parquet"])
def test_streaming_writes_byte_identical_shards(corpus, source):
    """--streaming (records read as they come, shards written as they fill) and the
    materialised data set give the same bytes in every file, manifest included."""
    outs = []
    for streaming in (False, True):
        out = corpus / f"shards-{source}-{streaming}"
        prepare_data([str(corpus / source), "--out", str(out), "--text-field", "content", "--shard-tokens", "400",
                      "--cache-dir", str(corpus / "cache"), *(["--streaming"] if streaming else [])])
        outs.append(out)
    names = sorted(p.relative_to(outs[0]).as_posix() for p in outs[0].rglob("*") if p.is_file())
    assert len([n for n in names if n.endswith(".bin")]) > 2
    assert names == sorted(p.relative_to(outs[1]).as_posix() for p in outs[1].rglob("*") if p.is_file())
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_builder_with_data_files_split_and_field_errors(corpus):
    (corpus / "split").mkdir()
    (corpus / "split" / "train.jsonl").write_text((corpus / "docs.jsonl").read_text())
    (corpus / "split" / "validation.jsonl").write_text(json.dumps({"content": "held out", "id": 0}) + "\n")
    a = prepare_data(["json", "--data-files", str(corpus / "docs.jsonl"), "--out", str(corpus / "a"),
                      "--text-field", "content", "--streaming", "--max-docs", "7"])
    assert a["documents"] == 7
    b = prepare_data([str(corpus / "split"), "--split", "validation", "--out", str(corpus / "b"),
                      "--text-field", "content", "--streaming"])
    assert [ByteTokenizer().decode(d[:-1].tolist()) for d in TokenShards.open(corpus / "b").documents()] == ["held out"]
    assert b["documents"] == 1
    with pytest.raises(SystemExit, match="available columns: content, id"):
        prepare_data([str(corpus / "docs.jsonl"), "--out", str(corpus / "c"), "--streaming"])


def test_shards_train_in_one_plain_process_like_the_deepspeed_loop(tmp_path, capsys):
    """python train.py data.shards=... runs without DeepSpeed (checkpoints/ layout, resumable),
    and its per-step losses equal the DeepSpeed loop's in one process with the same batch."""
    import json

    import pytest

    from xlstm_lm.data.shards import write_shards
    from xlstm_lm.data.tokenizers import ByteTokenizer
    from xlstm_lm.training.cli import main

    docs = [f"doc {i} " + "abc def " * (i % 9 + 1) for i in range(300)]
    write_shards(docs[:250], ByteTokenizer(), tmp_path / "shards")
    write_shards(docs[250:], ByteTokenizer(), tmp_path / "val")
    common = ["model.d_model=32", "model.num_blocks=2", "model.pattern=ms", "train.batch_size=4", "train.seq_len=16",
              "train.warmup_steps=1", "train.eval_every=2", "train.eval_batches=2", "train.log_every=1",
              "train.save_every=2", "train.sample_tokens=0", f"data.shards={tmp_path / 'shards'}",
              f"data.val_shards={tmp_path / 'val'}", "train.max_steps=4"]
    assert main(["--run-dir", str(tmp_path / "plain"), *common]) == 0
    assert (tmp_path / "plain" / "checkpoints" / "step_0000004").is_dir() and not (tmp_path / "plain" / "deepspeed").exists()
    records = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    plain = [r["loss"] for r in records if r["split"] == "train" and "kind" not in r]
    assert [r["step"] for r in records if r["split"] == "val"] == [2, 4]
    # resumable: continue to step 6
    assert main(["--run-dir", str(tmp_path / "plain"), "--resume", "train.max_steps=6"]) == 0
    assert (tmp_path / "plain" / "checkpoints" / "step_0000006").is_dir()

    pytest.importorskip("deepspeed")
    assert main(["--run-dir", str(tmp_path / "ds"), *common, "train.distributed.enabled=true"]) == 0
    ds = [json.loads(line)["loss"] for line in (tmp_path / "ds" / "losses.jsonl").read_text().splitlines()]
    # the same rows, weights, optimizer and schedule; clipping is DeepSpeed's in one, torch's in the other
    assert ds == pytest.approx(plain, rel=1e-5)
