"""Run configuration: model + training + data, one typed tree loaded from YAML.

``RunConfig`` is what ``train.py`` reads (``configs/*.yaml`` plus ``key=value``
overrides) and what every checkpoint stores, fully resolved, as ``config.yaml``.

Vocabulary-size rule: the tokenizer is only known once the data is read, so the
run-config resolution step (``resolve_vocab_size``, called by the trainer before
the model is built) decides ``model.vocab_size``:

* not given in the config, or given as ModelConfig's default (256, the byte
  vocabulary): it follows the tokenizer, i.e. is set to the tokenizer's
  vocabulary size;
* any other value is kept and must be >= the tokenizer's vocabulary size (extra
  rows are never predicted by the data); a smaller value is an error that names
  both numbers and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from ..config import ModelConfig
from ..config_utils import ConfigError, check, from_dict, to_dict
from ..data.sft import SFTConfig
from .lora import LoraSettings


@dataclass
class DistributedConfig:
    """Multi-process training with DeepSpeed (used when launched with WORLD_SIZE set,
    by ``deepspeed`` or ``torchrun``, or with ``enabled: true`` in one process)."""

    enabled: bool = False
    """Run the DeepSpeed loop even in a single process (WORLD_SIZE unset)."""
    zero_stage: int = 0
    """ZeRO stage 0-3: shard nothing, optimizer state, + gradients, + parameters."""
    offload_optimizer: bool = False
    """Keep optimizer state in CPU memory (ZeRO >= 1)."""
    offload_params: bool = False
    """Keep parameters in CPU memory (ZeRO-3)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """DeepSpeed mixed precision (fp32 master weights for bf16/fp16)."""
    micro_batch: int | None = None
    """Sequences per rank per micro step (None: train.batch_size / (world_size * grad_accum))."""
    grad_accum: int = 1
    """Micro steps per optimizer step."""
    grad_clip: float | None = None
    """Global gradient-norm clip (None: train.grad_clip)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (per block)."""
    compile: bool = False
    """torch.compile each block before DeepSpeed wraps the model."""

    def __post_init__(self):
        check(self.zero_stage in (0, 1, 2, 3), f"train.distributed.zero_stage must be 0-3, got {self.zero_stage}")
        check(self.grad_accum >= 1, f"train.distributed.grad_accum must be >= 1, got {self.grad_accum}")
        check(self.micro_batch is None or self.micro_batch >= 1, "train.distributed.micro_batch must be >= 1 or null")
        check(not self.offload_params or self.zero_stage == 3, "train.distributed.offload_params needs zero_stage 3")
        check(not self.offload_optimizer or self.zero_stage >= 1, "train.distributed.offload_optimizer needs zero_stage >= 1")


@dataclass
class TrainConfig:
    """Optimisation, evaluation, checkpointing and sampling of one training run."""

    max_steps: int = 1000
    """Number of optimizer steps of the whole run (a resume continues up to it)."""
    batch_size: int = 16
    """Sequences per optimizer step."""
    seq_len: int = 256
    """Tokens per training sequence (each window holds seq_len + 1 tokens)."""
    lr: float = 1e-3
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float = 1e-4
    """Learning rate at max_steps for the cosine and linear schedules."""
    warmup_steps: int = 100
    """Steps of linear warmup from 0 to lr."""
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    """Decay after warmup: cosine or linear down to min_lr, constant at lr, or wsd
    (warmup-stable-decay: constant lr, then linear to min_lr over the last decay_fraction of the steps)."""
    decay_fraction: float = 0.2
    """Fraction of max_steps spent in the final decay of the wsd schedule."""
    weight_decay: float = 0.1
    """AdamW decay of weight matrices (never of biases, gate biases, norms or 1-d params)."""
    decay_embeddings: bool = False
    """Also decay the embedding table (and an LM head tied to it)."""
    z_loss: float = 0.0
    """Coefficient of the z-loss, z_loss * mean(logsumexp(logits)^2), added to the training loss (0: off)."""
    max_bad_steps: int = 5
    """Consecutive steps with a NaN/Inf loss or gradient (each skipped) before the run stops."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""
    eval_every: int = 200
    """Evaluate on the validation split every this many steps (and at the end)."""
    eval_batches: int = 20
    """Batches of batch_size fixed validation windows per evaluation."""
    log_every: int = 10
    """Append the mean training loss to metrics.jsonl every this many steps."""
    save_every: int = 500
    """Write a checkpoint every this many steps (and at the end)."""
    keep_last: int = 3
    """Keep only the newest this many checkpoints."""
    seed: int = 0
    """Seed of model initialisation, dropout and the order of training windows."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto picks cuda when available, else cpu."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype; bfloat16 runs under autocast with float32 weights and optimizer."""
    run_dir: str = "runs/default"
    """Folder of checkpoints, metrics.jsonl, the tokenizer and the token cache."""
    tensorboard: bool = True
    """Mirror metrics.jsonl to TensorBoard event files in run_dir/tensorboard."""
    wandb_project: str | None = None
    """Also log metrics.jsonl's records to this Weights & Biases project (needs `pip install wandb`); null: off."""
    sample_tokens: int = 200
    """Tokens generated from sample_prompt at the end of training (0: no sample)."""
    sample_prompt: str = "def "
    """Prompt of the final sample generation."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """DeepSpeed / multi-process settings."""
    init_from: str | None = None
    """Start from these weights: a run dir, checkpoint or exported HF folder (see training.init_from)."""
    lora: LoraSettings | None = None
    """Train LoRA adapters only (see training.lora); None: full fine-tuning."""

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "seq_len", "eval_every", "eval_batches",
                     "log_every", "save_every", "keep_last"):
            value = getattr(self, name)
            check(value > 0, f"train.{name} must be positive, got {value}")
        check(self.lr > 0, f"train.lr must be positive, got {self.lr}")
        check(0 <= self.min_lr <= self.lr, f"train.min_lr must be in [0, train.lr={self.lr}], got {self.min_lr}")
        check(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        check(0 < self.decay_fraction <= 1, f"train.decay_fraction must be in (0, 1], got {self.decay_fraction}")
        check(self.z_loss >= 0, f"train.z_loss must be >= 0, got {self.z_loss}")
        check(self.max_bad_steps >= 1, f"train.max_bad_steps must be >= 1, got {self.max_bad_steps}")
        check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"train.betas must be two numbers in [0, 1), got {list(self.betas)}",
        )
        check(
            self.grad_clip is None or self.grad_clip > 0,
            f"train.grad_clip must be positive or null (no clipping), got {self.grad_clip}",
        )
        check(self.sample_tokens >= 0, f"train.sample_tokens must be >= 0, got {self.sample_tokens}")
        check(self.run_dir != "", "train.run_dir must not be empty")
        check(self.wandb_project != "", "train.wandb_project must be a project name or null (no wandb)")


@dataclass
class DataConfig:
    """Where the training text comes from and how it is tokenized.

    A folder is read recursively: every file ending in .txt, .md, .rst or .py
    (hidden files and folders skipped), in sorted path order, each one document.
    """

    path: str | None = None
    """A text file or a folder of text files; None: the built-in Python-stdlib corpus."""
    tokenizer: str = "byte"
    """'byte' (UTF-8 bytes), 'sentencepiece' (trained on the training split), or a
    Hugging Face tokenizer name or local path."""
    sp_vocab_size: int = 1024
    """Vocabulary size of the sentencepiece tokenizer (an upper bound on tiny corpora)."""
    val_fraction: float = 0.05
    """Fraction of the corpus (in bytes, from the end) held out for validation."""
    max_bytes: int | None = None
    """Read at most this many bytes of the corpus (None: all of a user corpus, 4 MB of the built-in one)."""
    shards: str | None = None
    """A folder of token shards from tools/prepare_data.py (packed rows with document resets); read by
    the single-process loop under a plain train.py and by the DeepSpeed loop under a launcher."""
    sft: SFTConfig | None = None
    """Supervised fine-tuning on JSONL instruction data instead of the text corpus (see data.sft)."""
    val_shards: str | None = None
    """Held-out token shards the distributed loop evaluates on every train.eval_every steps (None: no evaluation)."""

    def __post_init__(self):
        check(self.path != "", "data.path must be a file or folder, or null for the built-in corpus; got ''")
        check(self.tokenizer != "", "data.tokenizer must be 'byte', 'sentencepiece' or a Hugging Face tokenizer")
        check(
            self.sp_vocab_size >= 300,
            f"data.sp_vocab_size must be >= 300 (256 byte-fallback pieces + specials + merges), got {self.sp_vocab_size}",
        )
        check(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        check(
            self.max_bytes is None or self.max_bytes > 0,
            f"data.max_bytes must be positive or null (read everything), got {self.max_bytes}",
        )


@dataclass
class RunConfig:
    """Everything one training run needs: model, optimisation, data."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The language model."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, evaluation and checkpointing."""
    data: DataConfig = field(default_factory=DataConfig)
    """Corpus and tokenizer."""


def build_run_config(raw: dict[str, Any]) -> RunConfig:
    """Validate a plain dict (YAML + overrides) into a RunConfig; ConfigError names bad keys."""
    return from_dict(RunConfig, raw)


def vocab_size_is_explicit(raw: dict[str, Any]) -> bool:
    """Whether the raw config fixes model.vocab_size (absent or the default: it follows the tokenizer)."""
    model = raw.get("model") or {}
    default = next(f.default for f in fields(ModelConfig) if f.name == "vocab_size")
    return isinstance(model, dict) and model.get("vocab_size", default) != default


def resolve_vocab_size(cfg: RunConfig, tokenizer_vocab_size: int, explicit: bool) -> RunConfig:
    """Apply the vocabulary-size rule of this module; returns a new RunConfig."""
    if not explicit:
        return replace(cfg, model=replace(cfg.model, vocab_size=tokenizer_vocab_size))
    if cfg.model.vocab_size < tokenizer_vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's vocabulary of "
            f"{tokenizer_vocab_size} tokens (data.tokenizer={cfg.data.tokenizer!r}); "
            f"set model.vocab_size={tokenizer_vocab_size} (or larger), or remove it from the config "
            "to take the tokenizer's size"
        )
    return cfg


def config_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Human-readable 'key: a != b' lines for two (nested) dataclass configs."""
    da, db = to_dict(a), to_dict(b)
    out: list[str] = []

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
        elif x != y:
            out.append(f"{path}: {x!r} != {y!r}")

    walk(da, db, prefix)
    return out


__all__ = [
    "DataConfig",
    "RunConfig",
    "TrainConfig",
    "build_run_config",
    "config_differences",
    "resolve_vocab_size",
    "vocab_size_is_explicit",
]
