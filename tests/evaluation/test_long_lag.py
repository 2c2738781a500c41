"""Long-time-lag suite: generators (shapes, determinism, labels), success criteria,
a harness smoke test (an LSTM solves a short lag, an untrained model does not), CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xlstm_lm.evaluation import tasks as T
from xlstm_lm.evaluation.long_lag import (
    RunConfig,
    evaluate,
    make_model,
    plot_results,
    results_table,
    train_run,
)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]

ALL_TASKS = [
    pytest.param(T.EmbeddedReber(), id="reber"),
    pytest.param(T.LongLag(p=10, variant="a"), id="lag-a-p10"),
    pytest.param(T.LongLag(p=10, variant="b"), id="lag-b-p10"),
    pytest.param(T.LongLag(p=20, variant="c", q=30), id="lag-c-p20-q30"),
    pytest.param(T.Adding(T=30), id="adding-T30"),
    pytest.param(T.Multiplication(T=30), id="mult-T30"),
    pytest.param(T.TemporalOrder(2), id="order2"),
    pytest.param(T.TemporalOrder(3), id="order3"),
    pytest.param(T.Parity(T=12, min_len=1), id="parity-T12"),
    pytest.param(T.MQAR(num_pairs=4, num_keys=8, num_values=8), id="mqar-n4"),
]


def _sample(task, n=16, seed=0):
    return task.sample(n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("task", ALL_TASKS)
def test_shapes_and_determinism(task):
    a, b, c = _sample(task), _sample(task), _sample(task, seed=1)
    B, Tlen, I = a.x.shape
    assert B == 16 and I == task.input_size
    assert a.mask.shape == (B, Tlen) and a.mask.dtype == torch.bool
    assert a.mask.any(dim=1).all(), "every sequence has a scored position"
    if task.loss == "bce":
        assert a.y.shape == (B, Tlen, task.output_size)
    else:
        assert a.y.shape == (B, Tlen)
    if task.loss == "ce":
        assert a.y[a.mask].max() < task.output_size and a.y.dtype == torch.long
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.mask, b.mask)
    assert not (a.x.shape == c.x.shape and torch.equal(a.x, c.x)), "another seed gives other data"


def test_reber_strings_follow_the_grammar():
    batch = _sample(T.EmbeddedReber(), n=200)
    for s in batch.info["strings"]:
        assert T.reber_accepts(s, embedded=True), s
    # wrong closing symbol, illegal transitions, and a truncated string are rejected
    assert not T.reber_accepts("BTBTXSEPE", embedded=True)
    assert T.reber_accepts("BTBTXSETE", embedded=True)
    assert not T.reber_accepts("BTSSE")
    assert not T.reber_accepts("BTSSXX")
    # both T and P branches occur
    assert {s[1] for s in batch.info["strings"]} == {"T", "P"}


def test_reber_targets_are_legal_successors():
    batch = _sample(T.EmbeddedReber(), n=50)
    for b, s in enumerate(batch.info["strings"]):
        n = len(s) - 1
        assert batch.mask[b, :n].all() and not batch.mask[b, n:].any()
        for t in range(n):
            # the symbol that actually follows is always among the legal ones
            assert batch.y[b, t, T.REBER_SYMBOLS.index(s[t + 1])] == 1.0
        # the long-lag step: after the inner E only the remembered T/P is legal
        assert batch.y[b, n - 2].sum() == 1 and batch.y[b, n - 2, T.REBER_SYMBOLS.index(s[1])] == 1


def test_long_lag_last_target_is_first_symbol():
    for variant in "ab":
        task = T.LongLag(p=10, variant=variant)
        batch = _sample(task, n=32)
        first = batch.x[:, 0].argmax(-1)
        assert torch.equal(batch.y[:, -1], first)
        assert set(first.tolist()) == {9, 10}
    task = T.LongLag(p=20, variant="c", q=30)
    batch = _sample(task, n=32)
    L = batch.info["lengths"]
    assert (L >= 33).all() and (L <= 36).all()
    rows = torch.arange(32)
    assert torch.equal(batch.x[rows, L - 1].argmax(-1), torch.full((32,), 23))  # e
    assert torch.equal(batch.y[batch.mask], batch.x[:, 1].argmax(-1))


def test_adding_target_is_sum_of_marked_values():
    task = T.Adding(T=100)
    batch = _sample(task, n=256)
    vals, marks = batch.x[..., 0], batch.x[..., 1]
    marked_sum = (vals * (marks == 1)).sum(1)
    assert torch.allclose(marked_sum, batch.info["v1"] + batch.info["v2"], atol=1e-6)
    assert torch.allclose(batch.y[batch.mask], 0.5 + marked_sum / 4, atol=1e-6)
    assert ((marks == 1).sum(1) == 2).all()
    assert (batch.info["pos1"] < 10).all() and (batch.info["pos2"] < 49).all()
    L = batch.info["lengths"]
    assert (L >= 100).all() and (L <= 110).all()
    assert batch.mask.sum(1).eq(1).all() and batch.mask[torch.arange(256), L - 1].all()


def test_multiplication_target_is_product():
    batch = _sample(T.Multiplication(T=100), n=128)
    vals, marks = batch.x[..., 0], batch.x[..., 1]
    prod = torch.where(marks == 1, vals, torch.ones_like(vals)).prod(1)
    assert torch.allclose(batch.y[batch.mask], prod, atol=1e-6)


@pytest.mark.parametrize("n_relevant", [2, 3])
def test_temporal_order_label(n_relevant):
    batch = _sample(T.TemporalOrder(n_relevant), n=64)
    seq = batch.x.argmax(-1)
    real = batch.x.sum(-1) > 0
    for b in range(64):
        s = seq[b][real[b]].tolist()
        rel = ["XY"[c - 6] for c in s if c >= 6]
        assert len(rel) == n_relevant and s[0] == 5 and s[-1] == 4
        label = int("".join("0" if r == "X" else "1" for r in rel), 2)
        assert batch.y[b][batch.mask[b]].item() == label


def test_parity_labels():
    batch = _sample(T.Parity(T=12, min_len=1), n=64)
    bits, L = batch.info["bits"], batch.info["lengths"]
    for b in range(64):
        assert batch.y[b, L[b] - 1].item() == int(bits[b, : L[b]].sum()) % 2


def test_mqar_labels():
    task = T.MQAR(num_pairs=4, num_keys=8, num_values=8)
    batch = _sample(task, n=32)
    tok = batch.x.argmax(-1)
    for b in range(32):
        bind = {tok[b, 2 * i].item(): tok[b, 2 * i + 1].item() - 8 for i in range(4)}
        for t in range(8, 12):
            assert batch.y[b, t].item() == bind[tok[b, t].item()]


def test_criteria():
    task = T.Adding(T=30)
    batch = _sample(task, n=64)
    perfect = batch.y.unsqueeze(-1).clone()
    assert task.solved(perfect, batch) and task.error_rate(perfect, batch) == 0.0
    off = perfect.clone()
    off[3, :, 0] += 0.05  # one sequence off by more than 0.04
    assert not task.solved(off, batch) and task.error_rate(off, batch) == pytest.approx(1 / 64)
    assert task.solved(perfect + 0.039, batch)

    reber = T.EmbeddedReber()
    rb = _sample(reber, n=8)
    assert reber.solved(rb.y * 2 - 1, rb)  # legal units most active
    wrong = rb.y * 2 - 1
    b, t = 0, int(rb.mask[0].sum()) - 2  # the long-lag step of string 0
    wrong[b, t] = -wrong[b, t]
    assert not reber.solved(wrong, rb)

    par = T.Parity(T=8, min_len=1)
    pb = _sample(par, n=200)
    logits = torch.nn.functional.one_hot(pb.y, 2).float()
    assert par.solved(logits, pb)
    logits[:2] = 1 - logits[:2]  # 2/200 wrong = 99 %: still solved
    assert par.solved(logits, pb)
    logits[2] = 1 - logits[2]  # 3/200 wrong = 98.5 %
    assert not par.solved(logits, pb)

    mult = T.Multiplication(T=30)
    mb = _sample(mult, n=2000)
    out = mb.y.unsqueeze(-1).clone()
    out[:13] += 1.0
    assert mult.solved(out, mb)
    out[:14] += 1.0
    assert not mult.solved(out, mb)


def test_harness_lstm_solves_short_lag_and_untrained_fails():
    torch.set_num_threads(1)
    task = T.LongLag(p=5, variant="b", test_size=64)
    torch.manual_seed(0)
    untrained = make_model("lstm", task)
    test = task.sample(task.test_size, torch.Generator().manual_seed(123))
    solved, err = evaluate(untrained, task, test)
    assert not solved and err > 0.2
    r = train_run(task, "lstm", 0, RunConfig(budget=6_400, eval_every=320, lr=1e-2))
    assert r.solved, f"LSTM did not solve a 5-step lag in 6,400 sequences: {r.history}"
    assert r.sequences is not None and r.sequences <= 6_400 and r.final_error == 0.0
    table = results_table([r])
    assert "lagb_p5" in table and "1/1" in table


def test_plot_writes_png(tmp_path):
    task = T.MQAR(num_pairs=2, num_keys=4, num_values=4, test_size=32)
    r = train_run(task, "rnn", 0, RunConfig(budget=64, eval_every=32))
    plot_results([r], str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_cli_help():
    out = subprocess.run([sys.executable, str(ROOT / "eval" / "long_lag.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--quick" in out.stdout and "--full" in out.stdout
