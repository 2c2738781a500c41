"""The training loop: data -> model -> AdamW, with evaluation, checkpoints and resume.

``train(raw_config)`` runs a whole job; its steps, in order:

1. validate the config (unknown keys and bad values fail here, before any work), and
   what the launcher asks for and wandb's presence (``launch_env.preflight``);
2. find the run's ``latest`` checkpoint (``resume``) or refuse to overwrite one;
3. read and split the corpus, build (or, on resume, load) the tokenizer, resolve
   ``model.vocab_size`` from it (see ``training.config``), tokenize (cached);
4. build the model on the device, AdamW, and restore the checkpoint if resuming
   (weights, optimizer, step, RNG and training-window generator: the continued
   run's losses are identical to an uninterrupted one on CPU in float32);
5. train, logging to a tqdm bar (loss, tokens/s, MFU, ETA) and ``run_dir/metrics.jsonl``
   (mirrored to TensorBoard and, with ``train.wandb_project``, wandb; ``metrics.png``
   drawn at the end: ``training.monitor``); evaluate every
   ``eval_every`` steps; checkpoint every ``save_every`` steps, at the end, and on
   Ctrl-C or SIGTERM; a step with a NaN/Inf loss or gradient is skipped (logged),
   ``train.max_bad_steps`` in a row stop the run with ``TrainingDiverged``; a CUDA
   out-of-memory error is re-raised naming the settings to lower (``faults``);
6. print a short sample generated from ``sample_prompt``.

The model is used for one device exactly as built; bfloat16 is applied here, as
autocast around the forward pass, not inside the model.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..config import ModelConfig
from ..models import XLSTMLM
from ..config_utils import ConfigError, to_dict
from ..data.corpus import corpus_bytes, load_corpus, split_documents
from ..data.batch import PackedBatch
from ..data.dataset import TrainWindows, iter_batches, tokenize_splits, unigram_perplexity, val_windows
from ..data.shards import PackedLoader, TokenShards
from ..data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from .checkpoint import (
    TOKENIZER_DIR,
    latest_checkpoint,
    load_checkpoint_config,
    load_checkpoint_state,
    load_checkpoint_weights,
    save_checkpoint,
)
from .config import (
    DistributedConfig,
    RunConfig,
    build_run_config,
    config_differences,
    resolve_vocab_size,
    vocab_size_is_explicit,
)
from .faults import BadStepGuard, RunHealth, StopSignals, TrainingDiverged, divergence_advice, nonfinite_parameters, oom_message
from .optim import build_optimizer, lr_at, z_loss
from .finetune import prepare_sft_data, run_tokenizer, split_batch
from .init_from import check_tokenizer, load_init_weights, prepare_init
from .launch_env import preflight
from .lora import apply_lora
from .monitor import MetricsLog, format_mfu, mfu, peak_flops

METRICS_FILE = "metrics.jsonl"
#: Sampling temperature of the end-of-training sample.
SAMPLE_TEMPERATURE = 0.8


@dataclass
class TrainResult:
    """What a call to ``train`` did."""

    run_dir: Path
    step: int
    """Optimizer steps completed in total (including those before a resume)."""
    train_losses: list[float] = field(default_factory=list)
    """Loss of every step this call ran, in order."""
    val_loss: float | None = None
    val_ppl: float | None = None
    unigram_ppl: float | None = None
    """Perplexity of the add-one unigram model of the train split on the validation windows."""
    checkpoint: Path | None = None
    sample: str | None = None
    interrupted: bool = False
    wall_s: float = 0.0


def default_model_factory(model_cfg: ModelConfig) -> nn.Module:
    return XLSTMLM(model_cfg)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but no CUDA device is visible; use train.device=cpu or auto")
    return torch.device(name)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class _Data:
    """Everything ``train`` derives from the corpus and the tokenizer."""

    tokenizer: Tokenizer
    windows: TrainWindows
    val: torch.Tensor
    unigram_ppl: float | None
    summary: str


def _prepare_data(cfg: RunConfig, run_dir: Path, ckpt: Path | None, tokenizer: Tokenizer | None = None) -> _Data:
    """Read and split the corpus, get the tokenizer (trained, built, the checkpoint's or the given one), tokenize."""
    tc = cfg.train
    docs = load_corpus(cfg.data.path, cfg.data.max_bytes)
    train_docs, val_docs = split_documents(docs, cfg.data.val_fraction)
    if tokenizer is not None:
        if ckpt is None:
            tokenizer.save(run_dir / TOKENIZER_DIR)
    elif ckpt is not None:
        tokenizer = load_tokenizer(ckpt / TOKENIZER_DIR)
    else:
        if cfg.data.tokenizer == "sentencepiece":
            print(f"training a sentencepiece tokenizer (vocab <= {cfg.data.sp_vocab_size}) on the train split...")
        tokenizer = build_tokenizer(cfg.data.tokenizer, (d.text for d in train_docs), cfg.data.sp_vocab_size)
        tokenizer.save(run_dir / TOKENIZER_DIR)
    splits = tokenize_splits(train_docs, val_docs, tokenizer, cache_dir=run_dir / "cache")
    windows = TrainWindows(splits.train, tc.seq_len, tc.batch_size, tc.seed, splits.train_bytes, 1 - cfg.data.val_fraction)
    val = val_windows(splits.val, tc.seq_len, tc.eval_batches * tc.batch_size, splits.val_bytes, cfg.data.val_fraction)
    unigram_ppl = unigram_perplexity(splits.train, val[:, 1:].numpy(), tokenizer.vocab_size)
    source = cfg.data.path or "built-in corpus (Python stdlib sources)"
    summary = (
        f"data: {source}: {corpus_bytes(docs) / 1e6:.2f} MB in {len(docs)} documents -> "
        f"{splits.train.size:,} train / {splits.val.size:,} val tokens "
        f"({'cached' if splits.from_cache else 'tokenized'}; tokenizer {tokenizer.kind}, vocab {tokenizer.vocab_size})"
    )
    return _Data(tokenizer, windows, val, unigram_ppl, summary)


def _prepare_shards(cfg: RunConfig) -> _Data:
    """Token shards (``tools/prepare_data.py``) in one process: the packed loader of rank 0
    of 1 (resumable), the shards' tokenizer, and ``train.eval_batches`` fixed batches of
    ``data.val_shards`` as the validation set (none without them)."""
    tc = cfg.train
    shards = TokenShards.open(cfg.data.shards)
    loader = PackedLoader(shards, tc.seq_len, tc.batch_size, tc.seed)
    val = None
    if cfg.data.val_shards:
        held_out = PackedLoader(TokenShards.open(cfg.data.val_shards), tc.seq_len, tc.batch_size, seed=0)
        parts = [held_out.next_batch() for _ in range(min(tc.eval_batches, held_out.batches_per_epoch))]
        val = PackedBatch(*(torch.cat([getattr(p, f) for p in parts]) for f in ("input_ids", "labels", "reset")))
    summary = (f"data: shards {cfg.data.shards}: {shards.num_tokens:,} tokens, {loader.num_rows:,} rows of {tc.seq_len}"
               + (f"; validation {val.shape[0]} rows of {cfg.data.val_shards}" if val is not None else "; no data.val_shards"))
    return _Data(shards.tokenizer(), loader, val, None, summary)


def train(
    raw_config: dict[str, Any],
    *,
    resume: bool = False,
    model_factory: Callable[[ModelConfig], nn.Module] | None = None,
    progress: bool = True,
    stop_at_step: int | None = None,
) -> TrainResult:
    """Run (or, with ``resume``, continue) the training job described by ``raw_config``.

    ``raw_config`` is the plain dict of a YAML config with overrides applied.
    ``model_factory`` builds the model from the resolved ModelConfig (default:
    ``XLSTMLM``). ``stop_at_step`` stops as Ctrl-C does (checkpoint, then return)
    once that many steps are done.
    """
    t_start = time.time()
    # train.init_from: the model section comes from the source (training.init_from).
    raw_config, init = prepare_init(raw_config)
    cfg = build_run_config(raw_config)
    tc = cfg.train
    # launcher settings and wandb availability: refused before any work
    preflight(cfg, distributed=False)
    ignored = config_differences(DistributedConfig(), tc.distributed, "train.distributed")
    if ignored:
        raise ConfigError(
            f"train.distributed is set ({'; '.join(ignored)}) but this run trains in one process without DeepSpeed: "
            "set train.distributed.enabled=true (token shards or SFT data) or run under a launcher, or leave the "
            "train.distributed section out"
        )
    run_dir = Path(tc.run_dir)
    # a resume reads the weights too: one with NaN/Inf falls back to the newest usable checkpoint
    ckpt = latest_checkpoint(run_dir, verify_weights=resume)
    if ckpt is not None and not resume:
        raise ConfigError(
            f"run dir {run_dir} already holds checkpoints (latest: {ckpt.name}); pass --resume to continue "
            "that run, or choose a new one with --run-dir DIR"
        )
    if resume and ckpt is None:
        print(f"resume: no checkpoint in {run_dir}; starting a new run there")
    device = resolve_device(tc.device)
    run_dir.mkdir(parents=True, exist_ok=True)

    if cfg.data.sft is not None:
        data = prepare_sft_data(cfg, run_dir, ckpt, init)
    elif cfg.data.shards is not None:
        data = _prepare_shards(cfg)
    else:
        data = _prepare_data(cfg, run_dir, ckpt, run_tokenizer(cfg, run_dir, ckpt, init))
    if init is not None and ckpt is None:
        check_tokenizer(init, data.tokenizer, cfg.model.vocab_size)
    cfg = resolve_vocab_size(cfg, data.tokenizer.vocab_size, vocab_size_is_explicit(raw_config) or init is not None)
    if ckpt is not None:
        check_resume_config(build_run_config(load_checkpoint_config(ckpt)), cfg, ckpt)

    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    model = (model_factory or default_model_factory)(cfg.model).to(device)
    if init is not None and ckpt is None:
        load_init_weights(model, init)
        print(f"init-from: weights of {init.describe()}")
    if tc.lora is not None:
        # After the base weights, before the optimizer: only the adapters train (training.lora).
        model = apply_lora(model, tc.lora)
    optimizer = build_optimizer(model, tc)
    step = 0
    health_state = None
    if ckpt is not None:
        load_checkpoint_weights(model, ckpt)
        state = load_checkpoint_state(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        data.windows.load_state_dict(state["data"])
        _set_rng_state(state["rng"], device)
        step = int(state["step"])
        health_state = state.get("health")

    n_params, n_body = _num_params(model)
    print(data.summary)
    print(
        f"model: {n_params / 1e6:.2f}M parameters ({n_body / 1e6:.2f}M without embeddings), "
        f"vocab {cfg.model.vocab_size}; device {device}, {tc.dtype}; run dir {run_dir}"
    )
    if data.unigram_ppl is not None:
        print(f"unigram baseline (train-split token frequencies): val perplexity {data.unigram_ppl:.2f}")
    metrics = MetricsLog.from_config(run_dir / METRICS_FILE, cfg, resume_step=step if ckpt is not None else None)
    try:
        if ckpt is None and data.unigram_ppl is not None:
            metrics.log(step=0, split="val", kind="unigram_baseline", ppl=data.unigram_ppl)
        else:
            print(f"resumed from {ckpt} at step {step}")

        trainer = Trainer(cfg, model, optimizer, data.tokenizer, data.windows, data.val, device, run_dir, metrics, progress)
        if ckpt is not None:
            trainer.last_checkpoint, trainer.last_checkpoint_step = ckpt, step
            trainer.health.load_state_dict(health_state)
        result = trainer.fit(step, stop_at_step=stop_at_step)
        result.unigram_ppl = data.unigram_ppl
        if not result.interrupted and tc.sample_tokens > 0:
            result.sample = trainer.sample(tc.sample_prompt, tc.sample_tokens)
            print(f"--- sample ({tc.sample_tokens} tokens from {tc.sample_prompt!r}) ---\n{result.sample}\n---")
    finally:
        # flushes TensorBoard, finishes wandb, writes run_dir/metrics.png (also after an error)
        metrics.close()
    result.wall_s = time.time() - t_start
    if result.val_loss is not None:
        print(
            f"done: step {result.step}, val loss {result.val_loss:.4f}, ppl {result.val_ppl:.2f} "
            f"(unigram {data.unigram_ppl if data.unigram_ppl is not None else float('nan'):.2f}); "
            f"{result.wall_s:.0f} s; checkpoint {result.checkpoint}"
        )
    return result


def _num_params(model: nn.Module) -> tuple[int, int]:
    if hasattr(model, "num_params"):
        return model.num_params(), model.num_params(exclude_embedding=True)
    n = sum(p.numel() for p in model.parameters())
    return n, n


def check_resume_config(saved: RunConfig, requested: RunConfig, ckpt: Path, config_file: Path | None = None) -> None:
    """A resume must keep the model and the tokenizer of the checkpoint (ConfigError naming
    the differences otherwise); other differences are printed and take effect."""
    model_diffs = config_differences(saved.model, requested.model, "model")
    if model_diffs:
        raise ConfigError(
            f"cannot resume from {ckpt}: the requested model config differs from the saved one "
            f"({'; '.join(model_diffs)}). Resume with the run's own config "
            f"(--config {config_file or ckpt / 'config.yaml'}, or no --config) or start a new --run-dir"
        )
    tok_diffs = [d for d in config_differences(saved.data, requested.data, "data") if d.startswith(("data.tokenizer", "data.sp_vocab"))]
    if tok_diffs:
        raise ConfigError(f"cannot resume from {ckpt} with another tokenizer ({'; '.join(tok_diffs)}); start a new --run-dir")
    others = config_differences(saved.data, requested.data, "data") + config_differences(saved.train, requested.train, "train")
    if others:
        print(f"resume: these settings differ from the checkpoint's and take effect now: {'; '.join(others)}")


class Trainer:
    """Owns the step loop of one run; built by ``train``."""

    def __init__(
        self,
        cfg: RunConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        tokenizer: Tokenizer,
        windows: TrainWindows,
        val: torch.Tensor,
        device: torch.device,
        run_dir: Path,
        metrics: MetricsLog | None = None,
        progress: bool = True,
    ):
        self.cfg = cfg
        self.model = model
        self.optimizer = optimizer
        self.tokenizer = tokenizer
        self.windows = windows
        self.val = val
        self.device = device
        self.run_dir = run_dir
        self.progress = progress
        self.metrics = metrics
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_step = -1
        self.bad_steps = BadStepGuard(cfg.train.max_bad_steps, divergence_advice(cfg.train))
        self.health = RunHealth()
        flops = getattr(model, "flops_per_token", None)
        self.flops_per_token = flops(cfg.train.seq_len) if callable(flops) else None
        self.peak_flops = peak_flops(device)

    def autocast(self):
        if self.cfg.train.dtype == "bfloat16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _log(self, **record: Any) -> None:
        if self.metrics is not None:
            self.metrics.log(**record)

    def fit(self, start_step: int, stop_at_step: int | None = None) -> TrainResult:
        tc = self.cfg.train
        step = start_step
        result = TrainResult(run_dir=self.run_dir, step=step)
        stop = StopSignals()
        stop.requested = stop_at_step is not None and step >= stop_at_step
        tokens_per_step = tc.batch_size * tc.seq_len
        # Redraw less often when stderr is a log file rather than a terminal.
        interactive = sys.stderr.isatty()
        bar = tqdm(
            total=tc.max_steps, initial=step, disable=not self.progress, dynamic_ncols=True, unit="step",
            mininterval=0.5 if interactive else 30.0,
        )
        interval_losses: list[float] = []
        t_interval = time.time()
        step_time = None
        self.model.train()
        try:
            with stop.catch():
                while step < tc.max_steps and not stop.requested:
                    t0 = time.time()
                    lr = lr_at(step, tc)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    batch = self.windows.next_batch().to(self.device)
                    try:
                        loss, grad_norm = self._train_step(batch, step)
                    except torch.OutOfMemoryError as e:
                        raise torch.OutOfMemoryError(self._oom_message()) from e
                    step += 1
                    self.health.update(loss)
                    result.train_losses.append(loss)
                    interval_losses.append(loss)
                    bar.update(1)
                    dt = time.time() - t0
                    step_time = dt if step_time is None else 0.9 * step_time + 0.1 * dt
                    tok_s = tokens_per_step / max(step_time, 1e-9)
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}",
                                    mfu=format_mfu(mfu(tok_s, self.flops_per_token, self.peak_flops)), refresh=False)

                    if step % tc.log_every == 0 or step == tc.max_steps:
                        elapsed = time.time() - t_interval
                        interval_tok_s = len(interval_losses) * tokens_per_step / max(elapsed, 1e-9)
                        self._log(
                            step=step, split="train", tokens=step * tokens_per_step,
                            loss=sum(interval_losses) / len(interval_losses), lr=lr, grad_norm=grad_norm,
                            tokens_per_s=interval_tok_s, mfu=mfu(interval_tok_s, self.flops_per_token, self.peak_flops),
                        )
                        interval_losses.clear()
                        t_interval = time.time()
                    if step % tc.eval_every == 0 or step == tc.max_steps:
                        self._evaluate_into(result, step, bar)
                    if step % tc.save_every == 0 or step == tc.max_steps:
                        self.save(step)
                    if stop_at_step is not None and step >= stop_at_step:
                        stop.requested = True
        finally:
            bar.close()
        result.step = step
        if stop.requested and step < tc.max_steps:
            result.interrupted = True
            if self.last_checkpoint_step != step:
                self.save(step)
            print(f"stopped at step {step}; checkpoint {self.last_checkpoint}; continue with --resume")
        else:
            if self.last_checkpoint_step != step:
                self.save(step)
            if result.val_loss is None:
                self._evaluate_into(result, step, bar)
            problem = self.health.problem() or (
                None if result.val_loss is None or math.isfinite(result.val_loss)
                else f"the final validation loss is {result.val_loss}"
            )
            if problem is not None:
                # a finished run that diverged is a failure, whatever the step count says
                last = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written"
                raise TrainingDiverged(f"training ended at step {step} diverged: {problem}; {last}. " + self.bad_steps.advice)
        result.checkpoint = self.last_checkpoint
        return result

    def _evaluate_into(self, result: TrainResult, step: int, bar: tqdm) -> None:
        if self.val is None:
            return  # token shards without data.val_shards: nothing held out
        result.val_loss = self.evaluate()
        self.health.observe_val(result.val_loss)
        # exp overflows past ~709; a loss that high is a diverged model anyway.
        result.val_ppl = math.exp(min(result.val_loss, 700.0))
        self._log(step=step, split="val", loss=result.val_loss, ppl=result.val_ppl)
        bar.write(f"step {step}: val loss {result.val_loss:.4f}, ppl {result.val_ppl:.2f}")

    def _train_step(self, batch: torch.Tensor, step: int) -> tuple[float, float | None]:
        """One optimizer step on a (B, T + 1) token batch; returns (loss, grad norm or None).

        A non-finite loss or gradient norm skips the optimizer step (``_bad_step``).
        """
        tc = self.cfg.train
        inputs, labels, extra = split_batch(batch)
        with self.autocast():
            out = self.model(inputs, labels=labels, **extra)
        loss = out.loss
        if tc.z_loss > 0:
            loss = loss + tc.z_loss * z_loss(out.logits, labels)
        # Read the loss every step (a device sync): a NaN must not reach the weights.
        loss_value = loss.item()
        self.optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss_value):
            return self._bad_step(step, f"loss is {loss_value}"), None
        loss.backward()
        # max_norm=inf only measures the norm (the scale is clamped to 1: weights bit-identical).
        clip = tc.grad_clip if tc.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip).item()
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self._bad_step(step, f"gradient norm is {grad_norm}")
            return loss_value, None
        self.bad_steps.good()
        self.optimizer.step()
        return loss_value, grad_norm if tc.grad_clip is not None else None

    def _bad_step(self, step: int, what: str) -> float:
        """Log a skipped step (1-based ``step + 1``); raises ``TrainingDiverged`` after too many in a row."""
        line = self.bad_steps.bad(step + 1, what, self.last_checkpoint)
        tqdm.write(line)
        self._log(step=step + 1, split="train", kind="bad_step", what=what, consecutive=self.bad_steps.consecutive)
        return float("nan")

    def _oom_message(self) -> str:
        tc = self.cfg.train
        memory = None
        if self.device.type == "cuda":
            memory = f"peak {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB allocated"
        return oom_message(batch_size=tc.batch_size, seq_len=tc.seq_len, dtype=tc.dtype, memory=memory)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean next-token cross-entropy per trained target over the fixed validation set
        (the DeepSpeed loop's definition too: SFT rows weigh by their answer tokens, not
        one row one vote; for text windows, where every position is a target, the same)."""
        self.model.eval()
        total, count = 0.0, 0
        for batch in iter_batches(self.val, self.cfg.train.batch_size):
            batch = batch.to(self.device)
            with self.autocast():
                inputs, labels, extra = split_batch(batch)
                loss = self.model(inputs, labels=labels, **extra).loss
            n = int((labels != -100).sum())
            if n:
                total += loss.float().item() * n
                count += n
        self.model.train()
        return total / max(count, 1)

    def save(self, step: int) -> Path | None:
        """Write checkpoint ``step``, unless the weights hold NaN/Inf or the loss is diverging
        (then the newest checkpoint stays the last healthy one, which ``--resume`` takes)."""
        bad = nonfinite_parameters(self.model)
        problem = f"NaN/Inf weights in {', '.join(bad)}" if bad else self.health.problem()
        if problem is not None:
            tqdm.write(f"step {step}: checkpoint not written ({problem}); the newest stays {self.last_checkpoint}")
            self._log(step=step, split="train", kind="checkpoint_skipped", what=problem)
            return None
        state = {
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(self.device),
            "data": self.windows.state_dict(),
            "health": self.health.state_dict(),
        }
        self.last_checkpoint = save_checkpoint(
            self.run_dir, step, self.model, state, to_dict(self.cfg), self.tokenizer, self.cfg.train.keep_last
        )
        self.last_checkpoint_step = step
        return self.last_checkpoint

    def sample(self, prompt: str, num_tokens: int) -> str:
        """``prompt`` followed by ``num_tokens`` sampled tokens (cut at end-of-document)."""
        with self.autocast():
            return sample_text(self.model, self.tokenizer, prompt, num_tokens, self.cfg.train.seed, self.device)


@torch.no_grad()
def sample_text(model: nn.Module, tokenizer: Tokenizer, prompt: str, num_tokens: int, seed: int,
                device: torch.device) -> str:
    """The end-of-run sample of both loops: ``prompt`` and ``num_tokens`` tokens sampled at
    ``SAMPLE_TEMPERATURE`` (seeded; cut at end-of-document). Under ZeRO-3 every rank
    must call it (the forward gathers the partitioned weights); all get the same text."""
    ids = tokenizer.encode(prompt)
    if not ids:
        if tokenizer.eos_id is None:
            return prompt
        ids = [tokenizer.eos_id]
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(input_ids, max_new_tokens=num_tokens, temperature=SAMPLE_TEMPERATURE, generator=generator)
    model.train(was_training)
    new = out[0, len(ids):].tolist()
    if tokenizer.eos_id is not None and tokenizer.eos_id in new:
        new = new[: new.index(tokenizer.eos_id)]
    # Ids past the tokenizer's vocabulary (padding rows of a larger model.vocab_size) have no text.
    new = [i for i in new if i < tokenizer.vocab_size]
    return prompt + tokenizer.decode(new)


__all__ = ["METRICS_FILE", "TrainResult", "Trainer", "TrainingDiverged", "default_model_factory", "sample_text", "train"]
