"""eval/ptb_zaremba.py: vocabulary, stream batching with carried state, schedule, CI smoke run."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ptb_zaremba", REPO / "eval" / "ptb_zaremba.py")
ptb = importlib.util.module_from_spec(_spec)
# Registered before running it: dataclasses look their module up in sys.modules.
sys.modules["ptb_zaremba"] = ptb
_spec.loader.exec_module(ptb)


@pytest.fixture
def fake_ptb(tmp_path) -> Path:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(50)] + ["<unk>"]
    for split, lines in (("train", 300), ("valid", 40), ("test", 40)):
        text = "".join(" " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + " \n" for _ in range(lines))
        (tmp_path / f"ptb.{split}.txt").write_text(text)
    return tmp_path


def test_vocab_has_eos_per_line_and_frequency_order(fake_ptb):
    vocab = ptb.WordVocab(fake_ptb / "ptb.train.txt")
    ids = vocab.encode_file(fake_ptb / "ptb.train.txt")
    assert (ids == vocab.ids[ptb.EOS]).sum() == 300
    assert vocab.words[0] == ptb.EOS  # one per line: the most frequent token here
    assert len(vocab) == 52


def test_stream_batches_are_consecutive():
    data = ptb.streams(torch.arange(103), batch_size=4)  # 4 streams of 25
    assert data[1, 0] == 25
    batches = list(ptb.bptt_batches(data, bptt=7))
    inputs = torch.cat([x for x, _ in batches], dim=1)
    targets = torch.cat([y for _, y in batches], dim=1)
    # every stream is read once, in order; each target is the next token of its stream
    assert torch.equal(inputs, data[:, :-1]) and torch.equal(targets, data[:, 1:])


def test_learning_rate_schedules():
    small, medium = ptb.RECIPES["small"], ptb.RECIPES["medium"]
    assert [small.lr_at_epoch(e) for e in (1, 4, 5, 6)] == [1.0, 1.0, 0.5, 0.25]
    assert medium.lr_at_epoch(6) == 1.0 and medium.lr_at_epoch(8) == pytest.approx(1 / 1.2**2)
    assert (small.epochs, medium.epochs, small.batch_size, small.bptt, small.grad_clip) == (13, 39, 20, 35, 5.0)


def test_smoke_run(fake_ptb, tmp_path):
    out = tmp_path / "result.json"
    assert ptb.main(["small", "--data", str(fake_ptb), "--max-steps", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["steps"] == 3 and result["steps_per_s"] > 0
    assert 1 < result["test_ppl"] < 1000
