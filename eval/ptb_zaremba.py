"""Reproduce Zaremba et al. 2014 ("Recurrent Neural Network Regularization") on word-level PTB.

    python eval/ptb_zaremba.py small                     # 13 epochs, paper: val 120.7 / test 114.5 ppl
    python eval/ptb_zaremba.py medium                    # 39 epochs, paper: val 86.2 / test 82.7 ppl
    python eval/ptb_zaremba.py small --max-steps 20      # CI smoke test; prints steps/s
    python eval/ptb_zaremba.py small --block cudnn_lstm  # same LSTM via nn.LSTM (faster on CPU and GPU)

The model is ``configs/baselines/lstm_ptb_{small,medium}.yaml`` (plain stacked LSTM,
untied embeddings; medium with dropout 0.5 on non-recurrent connections). This script
has its own loop because the recipe differs from ``train.py`` in every respect:

* vocabulary: the words of ``ptb.train.txt`` (10k incl. ``<unk>``) plus ``<eos>``
  appended to every line, ids by descending frequency (ties: alphabetical);
* data: each split is one token stream cut into ``batch_size`` (20) parallel streams;
  batch i holds positions [i*35, (i+1)*35) of every stream (truncated BPTT, length 35)
  and the recurrent state is carried from batch to batch (detached), reset per epoch;
* init: every parameter uniform in [-init_scale, init_scale] (0.1 small, 0.05 medium);
* SGD, lr 1, multiplied by ``lr_decay`` every epoch after ``decay_after`` epochs
  (small: 0.5 after 4; medium: 1/1.2 after 6); gradient-norm clip 5 on the loss summed
  over the 35 steps and averaged over the batch (as the paper's code does);
* evaluation: validation perplexity after every epoch, test perplexity at the end,
  with the same stateful stream batching (batch 20; the paper's test used batch 1,
  which differs only at stream starts).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xlstm_lm.config import ModelConfig  # noqa: E402
from xlstm_lm.config_utils import apply_overrides, from_dict, load_yaml  # noqa: E402
from xlstm_lm.models import XLSTMLM  # noqa: E402

EOS = "<eos>"


@dataclass
class Recipe:
    """The optimisation recipe of one Zaremba et al. model size."""

    model_config: str
    """Model YAML (relative to the repo)."""
    epochs: int
    """Passes over the training stream."""
    decay_after: int
    """Epochs at the full learning rate before the per-epoch decay starts."""
    lr_decay: float
    """Factor applied to the learning rate every epoch after decay_after."""
    init_scale: float
    """Every parameter starts uniform in [-init_scale, init_scale]."""
    lr: float = 1.0
    batch_size: int = 20
    bptt: int = 35
    grad_clip: float = 5.0

    def lr_at_epoch(self, epoch: int) -> float:
        """Learning rate of 1-based ``epoch``."""
        return self.lr * self.lr_decay ** max(epoch - self.decay_after, 0)


RECIPES = {
    "small": Recipe("configs/baselines/lstm_ptb_small.yaml", epochs=13, decay_after=4, lr_decay=0.5, init_scale=0.1),
    "medium": Recipe("configs/baselines/lstm_ptb_medium.yaml", epochs=39, decay_after=6, lr_decay=1 / 1.2, init_scale=0.05),
}


class WordVocab:
    """Word-level vocabulary of a training file, ``<eos>`` at every line end."""

    def __init__(self, train_file: Path):
        counts = Counter(w for line in train_file.read_text().splitlines() for w in line.split() + [EOS])
        self.words = sorted(counts, key=lambda w: (-counts[w], w))
        self.ids = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode_file(self, path: Path) -> torch.Tensor:
        unk = self.ids.get("<unk>")
        out = []
        for line in path.read_text().splitlines():
            for w in line.split() + [EOS]:
                if w not in self.ids and unk is None:
                    raise ValueError(f"{path}: word {w!r} is not in the training vocabulary and there is no <unk>")
                out.append(self.ids.get(w, unk))
        return torch.tensor(out, dtype=torch.long)


def streams(tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(batch_size, n) parallel streams: the token stream cut into batch_size consecutive pieces."""
    n = tokens.numel() // batch_size
    return tokens[: n * batch_size].view(batch_size, n)


def bptt_batches(data: torch.Tensor, bptt: int):
    """(inputs, targets) of consecutive (B, <= bptt) slices; the state carries across them."""
    for i in range(0, data.shape[1] - 1, bptt):
        n = min(bptt, data.shape[1] - 1 - i)
        yield data[:, i : i + n], data[:, i + 1 : i + 1 + n]


def detach(state):
    return [tuple(t.detach() for t in s) for s in state]


@torch.no_grad()
def perplexity(model: XLSTMLM, data: torch.Tensor, bptt: int, max_steps: int | None = None) -> float:
    model.eval()
    total, count, state = 0.0, 0, None
    for step, (x, y) in enumerate(bptt_batches(data, bptt)):
        if max_steps is not None and step >= max_steps:
            break
        out = model(x, state)
        state = out.state
        total += F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    model.train()
    return math.exp(total / count)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("size", choices=sorted(RECIPES))
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ptb", help="folder with ptb.{train,valid,test}.txt")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many training steps (smoke test; evaluates on as many batches)")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's number of epochs")
    ap.add_argument("--block", default=None, choices=["lstm", "cudnn_lstm"], help="override model.block (cudnn_lstm: nn.LSTM)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the per-epoch results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = RECIPES[args.size]
    epochs = args.epochs or recipe.epochs
    device = torch.device(args.device)

    vocab = WordVocab(args.data / "ptb.train.txt")
    splits = {s: args.data / f"ptb.{s}.txt" for s in ("train", "valid", "test")}
    train_data = streams(vocab.encode_file(splits["train"]), recipe.batch_size).to(device)
    val_data = streams(vocab.encode_file(splits["valid"]), recipe.batch_size).to(device)
    test_data = streams(vocab.encode_file(splits["test"]), recipe.batch_size).to(device)

    raw = load_yaml(REPO / recipe.model_config)
    overrides = [f"model.vocab_size={len(vocab)}"] + ([f"model.block={args.block}"] if args.block else [])
    model_cfg = from_dict(ModelConfig, apply_overrides(raw, overrides)["model"], "model")
    torch.manual_seed(args.seed)
    model = XLSTMLM(model_cfg).to(device)
    for p in model.parameters():
        torch.nn.init.uniform_(p, -recipe.init_scale, recipe.init_scale)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr)
    steps_per_epoch = math.ceil((train_data.shape[1] - 1) / recipe.bptt)
    print(
        f"PTB {args.size}: vocab {len(vocab)}, {train_data.numel():,} train tokens in {recipe.batch_size} streams, "
        f"{steps_per_epoch} steps/epoch x {epochs} epochs; model {model.num_params() / 1e6:.2f}M params "
        f"({model_cfg.block}, d_model {model_cfg.d_model}); device {device}, {torch.get_num_threads()} threads"
    )

    history, step, train_time = [], 0, 0.0
    done = False
    for epoch in range(1, epochs + 1):
        lr = recipe.lr_at_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        state, total, count, t_epoch = None, 0.0, 0, time.time()
        for x, y in bptt_batches(train_data, recipe.bptt):
            out = model(x, state)
            state = detach(out.state)
            mean = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), y.reshape(-1))
            # The paper's objective: summed over the time steps, averaged over the batch.
            loss = mean * x.shape[1]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            total += mean.item() * y.numel()
            count += y.numel()
            step += 1
            if args.max_steps is not None and step >= args.max_steps:
                done = True
                break
        elapsed = time.time() - t_epoch
        train_time += elapsed
        limit = args.max_steps if done else None
        record = {
            "epoch": epoch, "lr": lr, "steps": step, "train_ppl": math.exp(total / count),
            "val_ppl": perplexity(model, val_data, recipe.bptt, limit), "steps_per_s": (step - (epoch - 1) * steps_per_epoch) / elapsed,
        }
        history.append(record)
        print(json.dumps(record))
        if done:
            break
    steps_per_s = step / train_time
    result = {
        "size": args.size, "block": model_cfg.block, "steps": step, "steps_per_s": steps_per_s,
        "estimated_full_run_h": recipe.epochs * steps_per_epoch / max(steps_per_s, 1e-9) / 3600,
        "test_ppl": perplexity(model, test_data, recipe.bptt, args.max_steps if done else None), "history": history,
    }
    print(
        f"test ppl {result['test_ppl']:.2f}; {steps_per_s:.2f} steps/s (training only) -> a full {recipe.epochs}-epoch "
        f"run trains for ~{result['estimated_full_run_h']:.1f} h here"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
