"""Synthetic long-time-lag tasks of Hochreiter & Schmidhuber (1997), plus parity and MQAR.

Every task is a seeded, deterministic generator: ``task.sample(n, generator)`` returns
a :class:`Batch` of ``n`` sequences drawn with a ``torch.Generator``, so the same seed
gives the same data on every machine. Layout (batch first, right-padded):

- ``x``    ``[B, T, I]`` float inputs (one-hot symbols or real-valued pairs);
- ``y``    targets: ``[B, T]`` long class indices (``loss="ce"``), ``[B, T]`` float
  (``loss="mse"``), or ``[B, T, O]`` float multi-hot (``loss="bce"``);
- ``mask`` ``[B, T]`` bool: the positions that are trained and scored.

Padding sits after each sequence's end; the models are causal, so it never reaches
a scored position. ``task.correct(out, batch)`` applies the task's criterion to model
outputs ``[B, T, O]`` and returns one bool per *unit* (a sequence, or for parity and
MQAR a scored position); ``task.success_fraction`` is the fraction of units that must
be correct for the task to count as solved (1.0 = every test unit, as in the paper).

Paper tasks (Sec. 5; "Exp." numbers are the paper's):
    :class:`EmbeddedReber` (Exp. 1), :class:`LongLag` (Exp. 2a/2b/2c),
    :class:`Adding` (Exp. 4), :class:`Multiplication` (Exp. 5),
    :class:`TemporalOrder` (Exp. 6a/6b).
Beyond the paper: :class:`Parity` (state tracking) and :class:`MQAR`
(multi-query associative recall, Arora et al. 2023).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

__all__ = [
    "MQAR",
    "REBER_SYMBOLS",
    "REBER_TRANSITIONS",
    "Adding",
    "Batch",
    "EmbeddedReber",
    "LongLag",
    "Multiplication",
    "Parity",
    "Task",
    "TemporalOrder",
    "reber_accepts",
]


@dataclass
class Batch:
    """A batch of right-padded sequences (see the module docstring for the layout)."""

    x: Tensor
    """Inputs ``[B, T, I]`` float."""
    y: Tensor
    """Targets ``[B, T]`` (long or float) or ``[B, T, O]`` float multi-hot."""
    mask: Tensor
    """Scored positions ``[B, T]`` bool."""
    info: dict | None = None
    """Task-specific extras used by the tests (e.g. raw sums, strings)."""


def _randint(lo: int, hi: int, size, g: torch.Generator) -> Tensor:
    """Integers uniform in ``[lo, hi]`` (inclusive)."""
    return torch.randint(lo, hi + 1, size if isinstance(size, tuple) else (size,), generator=g)


def _rand(size, g: torch.Generator) -> Tensor:
    return torch.rand(size if isinstance(size, tuple) else (size,), generator=g)


class Task:
    """Base class: a sequence task with its loss and success criterion."""

    name: str = "task"
    input_size: int
    output_size: int
    loss: Literal["ce", "mse", "bce"] = "ce"
    success_fraction: float = 1.0
    """Fraction of test units that must be correct for success."""
    unit: ClassVar[str] = "sequence"
    """What one entry of ``correct`` is: a 'sequence' or a scored 'position'."""
    test_size: int = 2560
    """Held-out test sequences (the paper's 2,560 where it gives a number)."""

    def sample(self, n: int, g: torch.Generator) -> Batch:
        raise NotImplementedError

    def correct(self, out: Tensor, batch: Batch) -> Tensor:
        """Default for ``ce``: a sequence is correct when every scored argmax is right."""
        pred = out.argmax(-1)
        ok = (pred == batch.y) | ~batch.mask
        return ok.all(dim=1)

    def error_rate(self, out: Tensor, batch: Batch) -> float:
        """Fraction of test units processed wrongly (the table's 'final error')."""
        return 1.0 - self.correct(out, batch).float().mean().item()

    def solved(self, out: Tensor, batch: Batch) -> bool:
        """The task's success criterion on a test batch."""
        ok = self.correct(out, batch)
        # count in integers: at most floor((1 - success_fraction) * n) wrong units
        allowed = math.floor((1.0 - self.success_fraction) * ok.numel() + 1e-9)
        return int((~ok).sum()) <= allowed


# ----------------------------------------------------------------------------- Exp. 1

REBER_SYMBOLS = "BTPSXVE"
"""The 7 symbols of the Reber grammar, in one-hot order."""

#: Reber grammar as a finite automaton: state -> [(symbol, next state)]; each choice p=0.5.
#: State 0 emits the start symbol B; state 6 emits the end symbol E (next state -1 = end).
REBER_TRANSITIONS: dict[int, list[tuple[str, int]]] = {
    0: [("B", 1)],
    1: [("T", 2), ("P", 3)],
    2: [("S", 2), ("X", 4)],
    3: [("T", 3), ("V", 5)],
    4: [("X", 3), ("S", 6)],
    5: [("P", 4), ("V", 6)],
    6: [("E", -1)],
}


def _reber_string(g: torch.Generator) -> tuple[str, list[set[str]]]:
    """One Reber string and, for each symbol, the set of symbols legal right after it."""
    s, legal, state = [], [], 0
    while state != -1:
        options = REBER_TRANSITIONS[state]
        sym, state = options[int(_randint(0, len(options) - 1, 1, g))]
        s.append(sym)
        legal.append({o for o, _ in REBER_TRANSITIONS[state]} if state != -1 else set())
    return "".join(s), legal


def reber_accepts(s: str, embedded: bool = False) -> bool:
    """True when ``s`` is a (embedded) Reber string; an independent check for the tests."""
    if embedded:
        return (
            len(s) >= 4 and s[0] == "B" and s[1] in "TP" and s[-1] == "E" and s[-2] == s[1]
            and reber_accepts(s[2:-2])
        )
    state = 0
    for i, c in enumerate(s):
        nxt = dict(REBER_TRANSITIONS.get(state, [])).get(c)
        if nxt is None:
            return False
        state = nxt
        if state == -1:
            return i == len(s) - 1
    return False


class EmbeddedReber(Task):
    """Exp. 1: next-symbol prediction on the embedded Reber grammar.

    String: ``B`` then ``T`` or ``P`` (p=0.5), a Reber string, the *same* ``T``/``P``
    again, then ``E``. At every symbol the model predicts the set of legal next
    symbols (7 sigmoid outputs, multi-hot targets, cross-entropy per unit). The hard
    part is the second-to-last symbol, which repeats the second one across the whole
    inner string.

    Success (paper): every symbol of every test string is predicted correctly, i.e. the
    units of the legal next symbols are always the most active ones. We implement it as:
    at each position with ``k`` legal successors, the top-``k`` outputs are exactly that
    set. The paper used 256 training and 256 test strings presented online; we draw
    fresh training strings and hold out ``test_size`` (default 256) test strings.
    """

    name = "reber"
    input_size = output_size = 7
    loss = "bce"

    def __init__(self, test_size: int = 256):
        self.test_size = test_size

    def sample(self, n: int, g: torch.Generator) -> Batch:
        strings, legals = [], []
        for _ in range(n):
            inner, inner_legal = _reber_string(g)
            tp = "TP"[int(_randint(0, 1, 1, g))]
            s = "B" + tp + inner + tp + "E"
            # after B: T or P; after tp: B (inner start); inner symbols: inner grammar,
            # except inner E, after which only the remembered tp is legal; then E.
            legal = [{"T", "P"}, {"B"}] + inner_legal[:-1] + [{tp}, {"E"}]
            strings.append(s)
            legals.append(legal)
        T = max(len(s) for s in strings) - 1
        x = torch.zeros(n, T, 7)
        y = torch.zeros(n, T, 7)
        mask = torch.zeros(n, T, dtype=torch.bool)
        for b, (s, legal) in enumerate(zip(strings, legals)):
            for t in range(len(s) - 1):
                x[b, t, REBER_SYMBOLS.index(s[t])] = 1.0
                for c in legal[t]:
                    y[b, t, REBER_SYMBOLS.index(c)] = 1.0
                mask[b, t] = True
        return Batch(x, y, mask, {"strings": strings})

    def correct(self, out: Tensor, batch: Batch) -> Tensor:
        # top-k of the outputs must equal the k legal symbols, at every scored position
        k = batch.y.sum(-1).long()  # (B, T)
        rank = out.argsort(-1, descending=True).argsort(-1)  # rank of each unit, 0 = most active
        in_topk = rank < k.unsqueeze(-1)
        ok = (in_topk == batch.y.bool()).all(-1) | ~batch.mask
        return ok.all(dim=1)


# ----------------------------------------------------------------------------- Exp. 2

class LongLag(Task):
    """Exp. 2: long time lags with and without local regularities.

    ``variant="a"`` (2a, noise-free): two sequences over ``p + 1`` symbols,
    ``(y, a_1, ..., a_{p-1}, y)`` and ``(x, a_1, ..., a_{p-1}, x)``, each with p=0.5.
    Next-symbol prediction at every step (softmax over the ``p + 1`` symbols); all
    steps but the last are locally predictable, the last needs the first symbol,
    ``p`` steps back. Success: every prediction of every test sequence correct.

    ``variant="b"`` (2b, no local regularities): as 2a, but the ``p - 1`` middle symbols
    are drawn uniformly from ``{a_1..a_{p-1}}``; only the last symbol is predictable, so
    only it is trained and scored (our choice; the paper trains next-symbol prediction
    throughout, where the middle targets are noise).

    ``variant="c"`` (2c, very long lags): ``p + 4`` symbols ``a_1..a_p, x, y, b, e``.
    Sequence: ``b``, then ``x`` or ``y``, then ``q + k`` random ``a_i``, then ``e``; the
    target after ``e`` is the second symbol. The paper draws the sequence end at random
    after at least ``q`` distractors; we choose ``k`` uniform in ``[0, q // 10]``.
    Only the final target is scored.

    Criterion (our reading): a test sequence is correct when its scored predictions
    (argmax) are right; success = all test sequences correct. The paper stops training
    on training-set error (< 0.25 for 2a/2b, < 0.01 with 2000 correct recent sequences
    for 2c) and tests on held-out sequences; for 2a only two distinct sequences exist.
    """

    def __init__(self, p: int = 100, variant: Literal["a", "b", "c"] = "a", q: int | None = None,
                 test_size: int = 256):
        if variant not in ("a", "b", "c"):
            raise ValueError(f"LongLag variant must be 'a', 'b' or 'c', got {variant!r}")
        if p < 2:
            raise ValueError(f"LongLag needs p >= 2, got p={p}")
        self.p, self.variant, self.q = p, variant, (p if q is None else q)
        self.name = f"lag{variant}_p{p}" + (f"_q{self.q}" if variant == "c" else "")
        self.test_size = test_size
        n_sym = p + 1 if variant in ("a", "b") else p + 4
        self.input_size = self.output_size = n_sym

    def sample(self, n: int, g: torch.Generator) -> Batch:
        p = self.p
        if self.variant in ("a", "b"):
            # symbols: 0..p-2 = a_1..a_{p-1}, p-1 = x, p = y
            first = p - 1 + _randint(0, 1, n, g)  # (B,)
            if self.variant == "a":
                mid = torch.arange(p - 1).expand(n, p - 1)
            else:
                mid = _randint(0, p - 2, (n, p - 1), g)
            seq = torch.cat([first[:, None], mid, first[:, None]], dim=1)  # (B, p+1)
            x = torch.nn.functional.one_hot(seq[:, :-1], self.input_size).float()
            y = seq[:, 1:].clone()
            mask = torch.zeros(n, p, dtype=torch.bool)
            if self.variant == "a":
                mask[:] = True
            else:
                mask[:, -1] = True
            return Batch(x, y, mask, {"first": first})
        # variant c: 0..p-1 = a_i, p = x, p+1 = y, p+2 = b, p+3 = e
        k = _randint(0, self.q // 10, n, g)
        lengths = 3 + self.q + k  # inputs: b, x|y, q+k distractors, e
        T = int(lengths.max())
        rel = p + _randint(0, 1, n, g)
        seq = _randint(0, p - 1, (n, T), g)
        seq[:, 0] = p + 2
        seq[:, 1] = rel
        ar = torch.arange(T)
        seq[ar[None] == (lengths - 1)[:, None]] = p + 3
        seq[ar[None] >= lengths[:, None]] = 0
        x = torch.nn.functional.one_hot(seq, self.input_size).float()
        x[ar[None].expand(n, T) >= lengths[:, None]] = 0.0
        y = torch.zeros(n, T, dtype=torch.long)
        mask = ar[None] == (lengths - 1)[:, None]
        y[mask] = rel
        return Batch(x, y, mask, {"first": rel, "lengths": lengths})


# ----------------------------------------------------------------------------- Exp. 4, 5

class _MarkedPairs(Task):
    """Shared generator of Exp. 4/5: pairs (value, marker), two marked values."""

    loss = "mse"
    input_size, output_size = 2, 1
    tolerance = 0.04
    """A sequence is processed correctly when |output - target| < tolerance at its end."""

    def __init__(self, T: int = 100, test_size: int = 2560):
        if T < 20:
            raise ValueError(f"{type(self).__name__} needs T >= 20 (markers go in the first 10 and T/2 steps), got {T}")
        self.T, self.test_size = T, test_size
        self.name = f"{self.prefix}_T{T}"

    def _values(self, size, g):
        raise NotImplementedError

    def _target(self, v1: Tensor, v2: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, g: torch.Generator) -> Batch:
        T = self.T
        lengths = _randint(T, T + T // 10, n, g)
        Tmax = int(lengths.max())
        vals = self._values((n, Tmax), g)
        marks = torch.zeros(n, Tmax)
        ar = torch.arange(Tmax)
        pos1 = _randint(self.first_pos, 9, n, g)
        # second marker among the first T/2 - 1 elements (indices 0..T/2-2), != the first:
        # draw from one fewer slot and skip over pos1
        pos2 = _randint(self.first_pos, T // 2 - 3, n, g)
        pos2 = torch.where(pos2 >= pos1, pos2 + 1, pos2)
        marks[:, 0] = -1.0
        marks[ar[None] == (lengths - 1)[:, None]] = -1.0
        rows = torch.arange(n)
        marks[rows, pos1] = 1.0
        marks[rows, pos2] = 1.0
        # Exp. 4: "if the first pair is marked, X1 is set to zero"
        vals[:, 0] = torch.where(pos1 == 0, torch.zeros(n), vals[:, 0])
        pad = ar[None] >= lengths[:, None]
        vals[pad], marks[pad] = 0.0, 0.0
        v1, v2 = vals[rows, pos1], vals[rows, pos2]
        x = torch.stack([vals, marks], dim=-1)
        mask = ar[None] == (lengths - 1)[:, None]
        y = torch.zeros(n, Tmax)
        y[mask] = self._target(v1, v2)
        return Batch(x, y, mask, {"v1": v1, "v2": v2, "pos1": pos1, "pos2": pos2, "lengths": lengths})

    def abs_error(self, out: Tensor, batch: Batch) -> Tensor:
        """|output - target| at each sequence's end, ``[B]``."""
        pred = out[..., 0][batch.mask]
        return (pred - batch.y[batch.mask]).abs()

    def correct(self, out: Tensor, batch: Batch) -> Tensor:
        return self.abs_error(out, batch) < self.tolerance


class Adding(_MarkedPairs):
    """Exp. 4, the adding problem.

    Each element is a pair: a value uniform in ``[-1, 1]`` and a marker in ``{-1, 0, 1}``.
    Length uniform in ``[T, T + T/10]``. One of the first 10 elements and another,
    different one of the first ``T/2 - 1`` elements get marker 1; the first and last
    elements get marker -1 (unless the first is marked, in which case its value X1 is
    set to 0). Target at the last step: ``0.5 + (X1 + X2) / 4`` (the sum scaled into
    [0, 1]); ``info["v1"] + info["v2"]`` is the raw sum.

    Success (as in the brief and the paper's test): absolute error < 0.04 on every one
    of the 2,560 test sequences. (The paper's training stopped when the average
    training error was < 0.01 and the 2000 most recent sequences were correct, then
    counted the test sequences with error > 0.04; its reported test error rates are
    small but not always zero.)
    """

    prefix = "adding"
    first_pos = 0

    def _values(self, size, g):
        return _rand(size, g) * 2.0 - 1.0

    def _target(self, v1, v2):
        return 0.5 + (v1 + v2) / 4.0


class Multiplication(_MarkedPairs):
    """Exp. 5, the multiplication problem.

    As :class:`Adding`, but values are uniform in ``[0, 1]`` and the target is
    ``X1 * X2``. We never mark the first element (our choice; the paper's rule for it
    is the adding problem's). The paper stopped training when at most ``n_seq`` of the
    2000 most recent training sequences had error > 0.04 (``n_seq`` = 140 and 13) and
    reported test errors of that order. Success here: at most 13/2000 (0.65 %) of the
    test sequences with absolute error >= 0.04.
    """

    prefix = "mult"
    first_pos = 1
    success_fraction = 1.0 - 13 / 2000

    def _values(self, size, g):
        return _rand(size, g)

    def _target(self, v1, v2):
        return v1 * v2


# ----------------------------------------------------------------------------- Exp. 6

class TemporalOrder(Task):
    """Exp. 6: temporal order of 2 (6a) or 3 (6b) widely separated relevant symbols.

    Symbols ``a, b, c, d, B, E, X, Y`` (one-hot, 8 inputs). A sequence of length
    uniform in ``[100, 110]`` starts with ``E`` and ends with ``B``; every other element
    is random from ``{a, b, c, d}`` except the relevant ones, each ``X`` or ``Y``:
    ``n_relevant=2``: at ``t1 in [10, 20]``, ``t2 in [50, 60]`` -> 4 classes;
    ``n_relevant=3``: ``t1 in [10, 20]``, ``t2 in [33, 43]``, ``t3 in [66, 76]`` -> 8 classes.
    The class (the X/Y order, read as a binary number) is predicted at the last step.

    Success: every one of the 2,560 test sequences classified correctly (argmax). The
    paper stops training when the average error is < 0.1 and the 2000 most recent
    sequences are correct, with outputs counted correct when all are within 0.3 of
    their targets; argmax is the classification reading of that.
    """

    SYMBOLS = "abcdBEXY"
    WINDOWS = {2: [(10, 20), (50, 60)], 3: [(10, 20), (33, 43), (66, 76)]}

    def __init__(self, n_relevant: int = 2, test_size: int = 2560):
        if n_relevant not in self.WINDOWS:
            raise ValueError(f"TemporalOrder supports n_relevant 2 or 3, got {n_relevant}")
        self.n_relevant, self.test_size = n_relevant, test_size
        self.name = f"order{n_relevant}"
        self.input_size = 8
        self.output_size = 2**n_relevant

    def sample(self, n: int, g: torch.Generator) -> Batch:
        lengths = _randint(100, 110, n, g)
        Tmax = int(lengths.max())
        seq = _randint(0, 3, (n, Tmax), g)
        seq[:, 0] = 5  # E
        ar = torch.arange(Tmax)
        seq[ar[None] == (lengths - 1)[:, None]] = 4  # B
        bits = _randint(0, 1, (n, self.n_relevant), g)
        rows = torch.arange(n)
        positions = []
        for j, (lo, hi) in enumerate(self.WINDOWS[self.n_relevant]):
            pos = _randint(lo, hi, n, g)
            seq[rows, pos] = 6 + bits[:, j]  # X or Y
            positions.append(pos)
        x = torch.nn.functional.one_hot(seq, 8).float()
        x[ar[None].expand(n, Tmax) >= lengths[:, None]] = 0.0
        label = (bits * (2 ** torch.arange(self.n_relevant - 1, -1, -1))).sum(-1)
        mask = ar[None] == (lengths - 1)[:, None]
        y = torch.zeros(n, Tmax, dtype=torch.long)
        y[mask] = label
        return Batch(x, y, mask, {"bits": bits, "positions": torch.stack(positions, 1), "seq": seq})


# ----------------------------------------------------------------------------- beyond the paper

class Parity(Task):
    """Parity of a bit string (state tracking; xLSTM paper, Table 1 / Deletang et al.).

    Input: ``T`` random bits (one-hot, 2 inputs). Target at every step ``t``: parity of
    bits ``0..t`` (running parity; every prefix is a parity instance, a dense signal).
    Scored unit: the parity at the *last* step of each test sequence (the full-length
    instance). Success: >= 99 % of test sequences correct (chance is 50 %). Lengths are
    uniform in ``[min_len, T]``.
    """

    unit = "sequence"
    input_size = output_size = 2
    success_fraction = 0.99

    def __init__(self, T: int = 20, min_len: int | None = None, test_size: int = 512):
        self.T, self.min_len, self.test_size = T, (T if min_len is None else min_len), test_size
        self.name = f"parity_T{T}"

    def sample(self, n: int, g: torch.Generator) -> Batch:
        lengths = _randint(self.min_len, self.T, n, g)
        bits = _randint(0, 1, (n, self.T), g)
        ar = torch.arange(self.T)
        pad = ar[None] >= lengths[:, None]
        bits[pad] = 0
        y = bits.cumsum(1) % 2
        x = torch.nn.functional.one_hot(bits, 2).float()
        x[pad] = 0.0
        return Batch(x, y, ~pad, {"bits": bits, "lengths": lengths})

    def correct(self, out: Tensor, batch: Batch) -> Tensor:
        last = batch.info["lengths"] - 1
        rows = torch.arange(out.shape[0])
        return out[rows, last].argmax(-1) == batch.y[rows, last]


class MQAR(Task):
    """Multi-query associative recall (Arora et al., 2023, "Zoology").

    ``num_pairs`` key-value pairs ``k_1 v_1 ... k_n v_n`` (keys distinct, from
    ``num_keys`` keys; values from ``num_values`` values; one-hot over both), then
    ``num_queries`` keys drawn without replacement from the shown ones. At each query
    position the target is the value bound to that key. Zoology places queries at
    random later positions; we place them right after the pairs (our choice, it only
    shortens sequences). Unit: one query; success: >= 99 % of test queries correct.
    """

    unit = "position"
    success_fraction = 0.99

    def __init__(self, num_pairs: int = 8, num_queries: int | None = None, num_keys: int = 16,
                 num_values: int = 16, test_size: int = 512):
        if num_pairs > num_keys:
            raise ValueError(f"MQAR needs num_pairs <= num_keys, got {num_pairs} > {num_keys}")
        self.num_pairs, self.num_keys, self.num_values = num_pairs, num_keys, num_values
        self.num_queries = num_pairs if num_queries is None else num_queries
        self.test_size = test_size
        self.name = f"mqar_n{num_pairs}"
        self.input_size = num_keys + num_values
        self.output_size = num_values

    def sample(self, n: int, g: torch.Generator) -> Batch:
        P, Q = self.num_pairs, self.num_queries
        keys = torch.stack([torch.randperm(self.num_keys, generator=g)[:P] for _ in range(n)])
        values = _randint(0, self.num_values - 1, (n, P), g)
        qidx = torch.stack([torch.randperm(P, generator=g)[:Q] for _ in range(n)])
        qkeys = keys.gather(1, qidx)
        T = 2 * P + Q
        tok = torch.zeros(n, T, dtype=torch.long)
        tok[:, 0 : 2 * P : 2] = keys
        tok[:, 1 : 2 * P : 2] = self.num_keys + values
        tok[:, 2 * P :] = qkeys
        x = torch.nn.functional.one_hot(tok, self.input_size).float()
        y = torch.zeros(n, T, dtype=torch.long)
        y[:, 2 * P :] = values.gather(1, qidx)
        mask = torch.zeros(n, T, dtype=torch.bool)
        mask[:, 2 * P :] = True
        return Batch(x, y, mask, {"keys": keys, "values": values, "qkeys": qkeys})

    def correct(self, out: Tensor, batch: Batch) -> Tensor:
        return out.argmax(-1)[batch.mask] == batch.y[batch.mask]
