"""Perplexity / bits-per-byte accounting, stream vs window modes, and the CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tests.models.test_lm import tiny_model
from tests.training.test_train import tiny_raw
from xlstm_lm.data.tokenizers import ByteTokenizer
from xlstm_lm.evaluation import Scorer, evaluate

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["def f(x):\n    return x + 1\n" * 3, "hello world, " * 7, "é ü ß — unicode counts bytes"]


def byte_scorer(stateful=True, bos=0):
    model = tiny_model("ms", dtype=torch.float64, vocab_size=256)
    tok = ByteTokenizer()

    def forward(ids, state):
        out = model(ids, state if stateful else None)
        return out.logits[0], (out.state if stateful else None)

    return model, Scorer(forward, tok.encode, tok.decode, stateful, "tiny", bos_id=bos)


def reference_nll(model, text):
    """Every byte predicted, the first one after the document separator (byte 0)."""
    ids = torch.tensor([0, *ByteTokenizer().encode(text)])[None]
    logits = model(ids).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item(), ids.shape[1] - 1


@pytest.mark.parametrize("chunk", [1, 7, 1000], ids=["chunk1", "chunk7", "chunk1000"])
def test_stream_mode_equals_one_full_forward(chunk):
    model, scorer = byte_scorer()
    res = evaluate(scorer, TEXTS, "stream", chunk=chunk, progress=False)
    ref = [reference_nll(model, t) for t in TEXTS]
    assert res.tokens == sum(n for _, n in ref)
    assert res.nll_nats == pytest.approx(sum(x for x, _ in ref), rel=1e-10)
    # byte tokenizer: one token per byte, so bits/byte is the loss in bits
    assert res.bytes == sum(len(t.encode()) for t in TEXTS) == res.tokens
    assert res.bits_per_byte == pytest.approx(res.loss / math.log(2))
    assert res.chars < res.bytes  # the unicode text has multi-byte characters


def test_without_separator_the_first_token_is_not_scored():
    _, scorer = byte_scorer(bos=None)
    res = evaluate(scorer, TEXTS[:2], "stream", progress=False)
    assert res.tokens == res.bytes == sum(len(t.encode()) - 1 for t in TEXTS[:2])


def test_window_mode_scores_each_token_once_and_full_windows_match_stream():
    model, scorer = byte_scorer(stateful=False)
    big = evaluate(scorer, TEXTS, "window", window=4096, stride=4096, progress=False)
    _, st = byte_scorer()
    stream = evaluate(st, TEXTS, "stream", chunk=16, progress=False)
    assert big.tokens == stream.tokens
    assert big.nll_nats == pytest.approx(stream.nll_nats, rel=1e-10)
    small = evaluate(scorer, TEXTS, "window", window=8, stride=3, progress=False)
    assert small.tokens == stream.tokens
    # shorter context can only be worse on repetitive text
    assert small.loss > stream.loss


def test_stream_mode_needs_a_stateful_model_and_text():
    _, scorer = byte_scorer(stateful=False)
    with pytest.raises(ValueError, match="use mode='window'"):
        evaluate(scorer, TEXTS, "stream", progress=False)
    _, scorer = byte_scorer()
    with pytest.raises(ValueError, match="nothing to score"):
        evaluate(scorer, ["", ""], "stream", progress=False)


def test_by_position_buckets_cover_all_tokens():
    _, scorer = byte_scorer()
    res = evaluate(scorer, TEXTS, "stream", progress=False)
    assert sum(b["tokens"] for b in res.by_position) == res.tokens
    assert [b["from_position"] for b in res.by_position][:3] == [1, 2, 4]


def test_cli_on_a_trained_checkpoint(tmp_path, capsys):
    from xlstm_lm.training import train

    sys.path.insert(0, str(REPO / "eval"))
    import perplexity as cli  # eval/perplexity.py

    train(tiny_raw(tmp_path / "run", "train.max_steps=2", "train.eval_every=2", "train.save_every=2"), progress=False)
    text = tmp_path / "doc.txt"
    text.write_text("import os\nprint(os.getcwd())\n" * 20)
    out, plot = tmp_path / "r.json", tmp_path / "p.png"
    rc = cli.main([str(tmp_path / "run"), "--text", str(text), "--mode", "both", "--chunk", "64",
                   "--window", "64", "--stride", "32", "--out", str(out), "--plot", str(plot)])
    assert rc == 0 and plot.stat().st_size > 1000
    record = json.loads(out.read_text())
    assert record["stream"]["tokens"] == record["window"]["tokens"] == len(text.read_text())
    assert "perplexity" in capsys.readouterr().out
    assert cli.main([str(tmp_path / "missing")]) == 2


def test_numbers_agree_with_lm_eval_rolling_loglikelihood(tmp_path):
    """eval/perplexity.py and lm-eval's HFLM score the same exported model on the same
    text: both prepend the end-of-document token and score every byte."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from tests.hf import tiny_hf_model
    from xlstm_lm.evaluation import load_scorer
    from xlstm_lm.hf.export import export_model

    model = tiny_hf_model("ms", dtype=torch.float32, vocab_size=256, eos_token_id=0, pad_token_id=0)
    export_model(model, ByteTokenizer(), tmp_path)
    texts = ["Hello world, this is a test.", "def f(x):\n    return x * 2\n", "déjà vu"]
    lm = HFLM(pretrained=str(tmp_path), trust_remote_code=True, batch_size=2, device="cpu", dtype="float32")
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)])
    scorer = load_scorer(tmp_path)
    for mode in ("stream", "window"):
        res = evaluate(scorer, texts, mode, chunk=8, window=64, stride=32, progress=False)
        # fp32 forward passes chunked differently: rounding only
        assert res.nll_nats == pytest.approx(-sum(rolling), rel=1e-5), mode
        assert res.bits_per_byte == pytest.approx(-sum(rolling) / math.log(2) / sum(len(t.encode()) for t in texts), rel=1e-5)


# --- text through `datasets` -------------------------------------------------------------
DOCS = [f"doc {i}: " + "héllo wörld, def f(x): return x\n" * (i % 4 + 1) for i in range(9)] + ["", "z"]


@pytest.fixture(scope="module")
def ppl_cli():
    sys.path.insert(0, str(REPO / "eval"))
    import perplexity as cli  # eval/perplexity.py

    return cli


@pytest.fixture(scope="module")
def doc_sources(tmp_path_factory):
    """The same documents as a folder of text files, JSONL (field 'content'), Parquet, and a
    folder whose file names give the splits; plus a run dir with a tiny checkpoint."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.hf import make_run

    root = tmp_path_factory.mktemp("sources")
    (root / "txt").mkdir()
    for i, d in enumerate(DOCS):
        (root / "txt" / f"{i:03d}.txt").write_text(d)
    rows = "".join(json.dumps({"content": d, "id": i}) + "\n" for i, d in enumerate(DOCS))
    (root / "docs.jsonl").write_text(rows)
    pq.write_table(pa.table({"content": DOCS, "id": list(range(len(DOCS)))}), root / "docs.parquet")
    (root / "splits").mkdir()
    (root / "splits" / "train.jsonl").write_text(json.dumps({"content": "not this one", "id": -1}) + "\n")
    (root / "splits" / "test.jsonl").write_text(rows)
    (root / "empty.jsonl").write_text("")
    make_run(root / "run", pattern="ms")
    return root


def _scores(cli, tmp_path, root, *args):
    out = tmp_path / f"r{len(list(tmp_path.glob('r*.json')))}.json"
    rc = cli.main([str(root / "run"), *args, "--mode", "both", "--chunk", "16", "--window", "24", "--stride", "8",
                   "--out", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("streaming", [False, True], ids=["arrow", "streaming"])
def test_dataset_sources_score_exactly_like_the_text_files(ppl_cli, doc_sources, tmp_path, streaming):
    """--dataset (JSONL, Parquet, builder + data files, a folder's split) gives the numbers
    of --text on the same documents: each record one document, scored from a fresh state."""
    root = doc_sources
    want = _scores(ppl_cli, tmp_path, root, "--text", str(root / "txt"))
    assert want["stream"]["documents"] == len(DOCS) - 1  # the empty document scores nothing
    common = ["--text-field", "content", "--cache-dir", str(tmp_path / "cache"), *(["--streaming"] if streaming else [])]
    sources = [["--dataset", str(root / "docs.jsonl")], ["--dataset", str(root / "docs.parquet")]]
    if not streaming:
        # how the source is named, not how it is read
        sources += [["--dataset", "json", "--data-files", str(root / "docs.jsonl")],
                    ["--dataset", str(root / "splits"), "--split", "test"], ["--dataset", str(root / "txt")]]
    for source in sources:
        got = _scores(ppl_cli, tmp_path, root, *source, *common)
        for mode in ("stream", "window"):
            assert got[mode] == want[mode], (source, mode)
    if streaming:
        # --max-docs: the first N records only
        few = _scores(ppl_cli, tmp_path, root, "--dataset", str(root / "docs.jsonl"), "--max-docs", "3", *common)
        (root / "txt3").mkdir(exist_ok=True)
        for i, d in enumerate(DOCS[:3]):
            (root / "txt3" / f"{i:03d}.txt").write_text(d)
        assert few["stream"] == _scores(ppl_cli, tmp_path, root, "--text", str(root / "txt3"))["stream"]


def test_dataset_errors_name_the_columns_and_the_problem(ppl_cli, doc_sources, tmp_path, capsys):
    root = doc_sources
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert ppl_cli.main([str(root / "run"), "--dataset", str(root / "docs.jsonl"), *cache]) == 2
    err = capsys.readouterr().err
    assert "no field 'text'" in err and "content, id" in err and "--text-field" in err
    for streaming in ([], ["--streaming"]):
        assert ppl_cli.main([str(root / "run"), "--dataset", str(root / "docs.parquet"), "--text-field", "body",
                             *cache, *streaming]) == 2
        assert "available columns: content, id" in capsys.readouterr().err
    assert ppl_cli.main([str(root / "run"), "--dataset", str(root / "empty.jsonl"), *cache]) == 2
    assert "holds no records" in capsys.readouterr().err
    assert ppl_cli.main([str(root / "run"), "--dataset", str(root / "splits"), "--split", "validation", *cache]) == 2
    assert "splits by file name: train, test" in capsys.readouterr().err
    assert ppl_cli.main([str(root / "run"), "--dataset", str(root / "splits"), *cache]) == 2
    assert "holds the splits train, test (by file names); choose one (--split)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ppl_cli.main([str(root / "run"), "--text", str(root / "txt"), "--dataset", str(root / "docs.jsonl")])
