"""Long-time-lag benchmark harness: a small sequence model over any block kind, a
train/evaluate loop with the tasks' success criteria, and the results table and plot.

Model (:class:`SeqModel`): ``Linear(I -> D)`` -> blocks from ``build_block`` (one kind,
or a ``pattern``) -> final norm -> ``Linear(D -> O)``, outputs ``[B, T, O]`` at every
step; the task's ``mask`` picks the trained/scored steps.

Training (:func:`train_run`): Adam (lr ``RunConfig.lr``, gradient-norm clipping) on
mini-batches of freshly generated sequences, up to a budget counted in training
sequences; every ``eval_every`` sequences the model is evaluated on a fixed held-out
test set and the run stops at the first evaluation that meets the task's criterion.
The paper trained with online (batch size 1) gradient descent, truncated gradients
and per-task learning rates; Adam with mini-batches is our deviation, so the
"sequences to success" are not comparable number-for-number with the paper's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ClassicConfig, MLSTMConfig, ModelConfig, SLSTMConfig
from ..layers.norms import make_norm
from ..models.blocks import build_block
from . import tasks as T

__all__ = [
    "MODELS",
    "RunConfig",
    "RunResult",
    "SeqModel",
    "Spec",
    "full_specs",
    "make_model",
    "plot_results",
    "quick_specs",
    "results_table",
    "run_suite",
    "summarize",
    "train_run",
]

#: Model name -> block kind (the suite's backbones).
MODELS: dict[str, str] = {
    "rnn": "elman",
    "lstm1997": "lstm1997",
    "lstm": "lstm",
    "gru": "gru",
    "slstm": "slstm",
    "mlstm": "mlstm",
}


class SeqModel(nn.Module):
    """Input projection -> residual block stack -> final norm -> per-step linear head."""

    def __init__(self, input_size: int, output_size: int, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(input_size, cfg.d_model)
        self.blocks = nn.ModuleList(build_block(cfg, i, kind) for i, kind in enumerate(cfg.block_kinds))
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, output_size)
        for block in self.blocks:
            if hasattr(block, "reset_parameters"):
                block.reset_parameters()

    def forward(self, x_BTI: Tensor) -> Tensor:
        h = self.inp(x_BTI)  # (B, T, D)
        for block in self.blocks:
            h, _ = block(h)
        return self.head(self.norm(h))  # (B, T, O)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def make_model(model: str, task: T.Task, d_model: int = 16, num_blocks: int = 1,
               pattern: str | None = None) -> SeqModel:
    """A :class:`SeqModel` for ``task``; ``model`` is a key of ``MODELS`` (or use ``pattern``).

    Small widths need small rounding multiples, so the mLSTM/sLSTM projection sizes are
    rounded to 8 here rather than the language-model default 64.
    """
    if pattern is None and model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)} or give a pattern")
    heads = 2 if d_model % 2 == 0 else 1
    cfg = ModelConfig(
        d_model=d_model,
        num_blocks=num_blocks if pattern is None else len(pattern),
        block=MODELS.get(model, "mlstm"),
        pattern=pattern,
        mlstm=MLSTMConfig(num_heads=heads, round_to=8, qkv_blocksize=4),
        slstm=SLSTMConfig(num_heads=heads, round_to=8),
        classic=ClassicConfig(residual=True),
    )
    return SeqModel(task.input_size, task.output_size, cfg)


@dataclass
class RunConfig:
    """Budget and optimiser of one training run."""

    budget: int = 10_000
    """Training sequences (the paper's unit) before giving up."""
    batch_size: int = 32
    """Sequences per Adam step."""
    lr: float = 5e-3
    """Adam learning rate."""
    clip: float = 1.0
    """Gradient-norm clip."""
    eval_every: int = 1_000
    """Evaluate on the test set every this many training sequences."""
    d_model: int = 16
    """Width of the model (the number of memory cells of a classic block)."""
    num_blocks: int = 1
    """Blocks in the stack."""


@dataclass
class RunResult:
    task: str
    model: str
    seed: int
    solved: bool
    sequences: int | None
    """Training sequences seen when the criterion was first met (None if never)."""
    final_error: float
    """Error rate on the test set at the end (fraction of units processed wrongly)."""
    seconds: float
    num_params: int
    history: list[tuple[int, float]] = field(default_factory=list)
    """(training sequences, test error rate) at every evaluation."""


def _loss(task: T.Task, out: Tensor, batch: T.Batch) -> Tensor:
    m = batch.mask
    if task.loss == "ce":
        return F.cross_entropy(out[m], batch.y[m])
    if task.loss == "mse":
        return F.mse_loss(out[..., 0][m], batch.y[m])
    return F.binary_cross_entropy_with_logits(out[m], batch.y[m])


@torch.no_grad()
def evaluate(model: SeqModel, task: T.Task, test: T.Batch, chunk: int = 1024) -> tuple[bool, float]:
    """``(solved, error_rate)`` of ``model`` on the (CPU) test batch, run in chunks on the
    model's device; the criterion is applied on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    outs = [model(test.x[i : i + chunk].to(device)).float().cpu() for i in range(0, test.x.shape[0], chunk)]
    model.train()
    out = torch.cat(outs)
    return task.solved(out, test), task.error_rate(out, test)


def train_run(task: T.Task, model_name: str, seed: int, rc: RunConfig,
              pattern: str | None = None, log: Callable[[str], None] | None = None,
              device: str | torch.device = "cpu") -> RunResult:
    """Train one model on one task from one seed; stop at success or at the budget.

    Data are generated on the CPU (so they do not depend on the device) and moved to
    ``device`` per batch.
    """
    torch.manual_seed(seed)
    model = make_model(model_name, task, rc.d_model, rc.num_blocks, pattern).to(device)
    # Test data from a seed stream disjoint from the training stream.
    test = task.sample(task.test_size, torch.Generator().manual_seed(1_000_003 + seed))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=rc.lr)
    t0 = time.perf_counter()
    seen, history, solved_at = 0, [], None
    solved, err = evaluate(model, task, test)
    history.append((0, err))
    while seen < rc.budget and not solved:
        batch = task.sample(rc.batch_size, g)
        batch = T.Batch(batch.x.to(device), batch.y.to(device), batch.mask.to(device))
        loss = _loss(task, model(batch.x), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), rc.clip)
        opt.step()
        seen += rc.batch_size
        if seen % rc.eval_every < rc.batch_size or seen >= rc.budget:
            solved, err = evaluate(model, task, test)
            history.append((seen, err))
            if log:
                log(f"  {task.name:>12s} {model_name:>8s} seed {seed}: {seen:>7d} seqs  loss {loss.item():.4f}  test err {err:.4f}")
    if solved:
        solved_at = history[-1][0]
    return RunResult(task.name, model_name if pattern is None else pattern, seed, solved, solved_at, err,
                     time.perf_counter() - t0, model.num_params(), history)


# ----------------------------------------------------------------------------- modes

@dataclass
class Spec:
    """One task of a suite with its per-run budget."""

    task: T.Task
    run: RunConfig


def quick_specs() -> list[Spec]:
    """~10 CPU-minutes (2 cores): short lags, small widths, strict budgets."""
    return [
        Spec(T.EmbeddedReber(test_size=256), RunConfig(budget=16_000, eval_every=1_600, lr=1e-2)),
        Spec(T.LongLag(p=100, variant="a", test_size=64), RunConfig(budget=9_600, eval_every=960, lr=1e-2)),
        Spec(T.Adding(T=100, test_size=2560), RunConfig(budget=9_600, eval_every=1_600, lr=1e-2)),
        Spec(T.TemporalOrder(2, test_size=2560), RunConfig(budget=6_400, eval_every=1_600, lr=1e-2)),
        Spec(T.Parity(T=16, min_len=1, test_size=512), RunConfig(budget=9_600, eval_every=1_600, lr=1e-2)),
        Spec(T.MQAR(num_pairs=4, num_keys=8, num_values=8, test_size=512), RunConfig(budget=9_600, eval_every=1_600, lr=1e-2)),
    ]


def full_specs() -> list[Spec]:
    """The paper's lags, lengths and test sizes; budgets in the range the paper needed (GPU)."""
    big = dict(d_model=64, lr=1e-3, batch_size=64)
    return [
        Spec(T.EmbeddedReber(test_size=256), RunConfig(budget=100_000, eval_every=2_000, **big)),
        Spec(T.LongLag(p=100, variant="a", test_size=64), RunConfig(budget=50_000, eval_every=1_000, **big)),
        Spec(T.LongLag(p=100, variant="b", test_size=2560), RunConfig(budget=200_000, eval_every=4_000, **big)),
        Spec(T.LongLag(p=1000, variant="c", q=1000, test_size=2560), RunConfig(budget=400_000, eval_every=10_000, **big)),
        Spec(T.Adding(T=100), RunConfig(budget=200_000, eval_every=5_000, **big)),
        Spec(T.Adding(T=500), RunConfig(budget=400_000, eval_every=10_000, **big)),
        Spec(T.Adding(T=1000), RunConfig(budget=1_000_000, eval_every=20_000, **big)),
        Spec(T.Multiplication(T=100), RunConfig(budget=1_000_000, eval_every=10_000, **big)),
        Spec(T.TemporalOrder(2), RunConfig(budget=200_000, eval_every=5_000, **big)),
        Spec(T.TemporalOrder(3), RunConfig(budget=400_000, eval_every=10_000, **big)),
        Spec(T.Parity(T=40, min_len=1, test_size=2560), RunConfig(budget=400_000, eval_every=10_000, **big)),
        Spec(T.MQAR(num_pairs=16, num_keys=64, num_values=64, test_size=2560), RunConfig(budget=400_000, eval_every=10_000, **big)),
    ]


def run_suite(specs: Sequence[Spec], models: Sequence[str], seeds: Sequence[int],
              log: Callable[[str], None] | None = print, device: str = "cpu") -> list[RunResult]:
    """Every task x model x seed; results in that order."""
    results = []
    for spec in specs:
        for model in models:
            for seed in seeds:
                r = train_run(spec.task, model, seed, spec.run, log=None, device=device)
                results.append(r)
                if log:
                    log(f"{r.task:>12s} {r.model:>8s} seed {seed}: solved={r.solved} seqs={r.sequences} "
                        f"err={r.final_error:.4f} ({r.seconds:.1f}s, {r.num_params} params)")
    return results


# ----------------------------------------------------------------------------- reporting

def summarize(results: Sequence[RunResult]) -> dict[tuple[str, str], dict]:
    """(task, model) -> success rate, median sequences-to-success, median final error, runs."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.task, r.model), []).append(r)
    out = {}
    for key, rs in groups.items():
        solved = [r.sequences for r in rs if r.solved]
        out[key] = {
            "success": len(solved) / len(rs),
            "n": len(rs),
            "median_seqs": statistics.median(solved) if solved else None,
            "final_error": statistics.median(r.final_error for r in rs),
            "seconds": sum(r.seconds for r in rs),
        }
    return out


def _order(results):
    tasks = list(dict.fromkeys(r.task for r in results))
    models = list(dict.fromkeys(r.model for r in results))
    return tasks, models


def results_table(results: Sequence[RunResult]) -> str:
    """Markdown table: one row per task, per model 'solved/runs, median seqs, error'."""
    s = summarize(results)
    tasks, models = _order(results)
    lines = [
        "| task | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for t in tasks:
        cells = []
        for m in models:
            c = s[(t, m)]
            seqs = "–" if c["median_seqs"] is None else f"{int(c['median_seqs']):,}"
            cells.append(f"{round(c['success'] * c['n'])}/{c['n']} · {seqs} · {c['final_error']:.3f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(results: Sequence[RunResult], path: str, title: str = "") -> None:
    """Heat map of success rates (task x model), annotated with success rate and
    median training sequences to success, in the spirit of the paper's tables."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarize(results)
    tasks, models = _order(results)
    rate = torch.tensor([[s[(t, m)]["success"] for m in models] for t in tasks]).numpy()
    fig, ax = plt.subplots(figsize=(1.4 * len(models) + 2, 0.7 * len(tasks) + 1.5))
    im = ax.imshow(rate, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i, t in enumerate(tasks):
        for j, m in enumerate(models):
            c = s[(t, m)]
            seqs = "" if c["median_seqs"] is None else f"\n{int(c['median_seqs']):,} seq"
            ax.text(j, i, f"{c['success']:.0%}{seqs}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(models)), models)
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_title(title or "success rate over seeds (median training sequences to success)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, label="success rate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
