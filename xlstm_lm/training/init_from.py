"""``train.init_from`` / ``train.py --init-from``: start a run from existing weights.

The source is one of

* a run dir (its ``latest`` checkpoint) or a checkpoint folder (``model.safetensors``,
  ``config.yaml``, ``tokenizer/``), or
* a Hugging Face folder written by ``tools/export_hf.py`` (``config.json`` with
  ``model_type: xlstm_lm``, ``model.safetensors`` or sharded safetensors).

Rules (``prepare_init``, applied to the raw config before it is validated):

* the model config comes from the source; ``model.*`` keys of the run config are
  overrides on top of it and may only change what leaves every parameter shape as
  it is (dropout, kernel backend, chunk size, ...); one that changes a shape is a
  ``ConfigError`` naming the parameters. (``train.py --init-from`` drops the config
  file's ``model:`` section, so only command-line ``model.*`` overrides apply.)
* the tokenizer of ``data.tokenizer`` must be the source's: for a checkpoint the
  saved tokenizer's fingerprint must match; for a HF folder its tokenizer must give
  the same ids on a probe text. ``data.tokenizer: sentencepiece`` means "the
  source's sentencepiece model" (a freshly trained one could never match).
* only the weights are taken: optimizer, step and schedule start fresh, with the
  run's own ``train`` settings. A ``--resume`` of the new run continues from its
  own checkpoints and ignores the source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..config import ModelConfig
from ..config_utils import ConfigError, from_dict, to_dict
from ..data.tokenizers import ByteTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer
from ..models import XLSTMLM
from ..runs import is_hf_folder, load_hf_tokenizer
from . import checkpoint as ckpt_io
from .config import config_differences

#: Text whose ids identify a tokenizer's mapping when no fingerprint can be compared.
PROBE_TEXT = "def f(x):\n    return x + 1  # Ünïcødé ✓ 日本語\n\tThe quick brown fox, 0123456789!?"


@dataclass
class InitSource:
    """The weights, model config and tokenizer of an ``--init-from`` source."""

    path: Path
    kind: str
    """'checkpoint' or 'hf'."""
    model: dict[str, Any]
    """The source's model config (plain dict)."""
    weight_files: list[Path]
    prefix: str
    """Prefix of the model's parameter names in the weight files ('' or 'model.')."""
    tokenizer: Tokenizer | None
    """The source's tokenizer in this package's interface (checkpoints; HF byte/sentencepiece exports)."""
    hf_tokenizer: Any = None
    """A transformers tokenizer of a HF folder (probe comparison), or None."""

    def describe(self) -> str:
        return f"{self.kind} {self.path}"


def _hf_source(path: Path) -> InitSource:
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("model_type") != "xlstm_lm" or not isinstance(cfg.get("model"), dict):
        raise ConfigError(
            f"--init-from {path}: config.json has model_type {cfg.get('model_type')!r}; only folders written by "
            "tools/export_hf.py (model_type 'xlstm_lm', remote format) can be fine-tuned here"
        )
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif (path / "model.safetensors.index.json").is_file():
        index = json.loads((path / "model.safetensors.index.json").read_text())
        files = [path / f for f in sorted(set(index["weight_map"].values()))]
    else:
        raise ConfigError(f"--init-from {path}: no model.safetensors (or its index) in the folder")
    tokenizer, hf_tok = None, None
    if (path / "sentencepiece.model").is_file():
        tokenizer = SentencePieceTokenizer((path / "sentencepiece.model").read_bytes())
    else:
        try:
            # our model type: the installed tokenizer classes, never the folder's own code
            hf_tok = load_hf_tokenizer(path)
        except Exception as e:  # no tokenizer files
            print(f"init-from: cannot load the tokenizer of {path} ({type(e).__name__}); checking the vocabulary size only")
    return InitSource(path, "hf", dict(cfg["model"]), files, "model.", tokenizer, hf_tok)


def resolve_init_source(path: str | Path) -> InitSource:
    """Find the weights, model config and tokenizer of a run dir, checkpoint or HF folder."""
    path = Path(path)
    if is_hf_folder(path):
        return _hf_source(path)
    try:
        ckpt = ckpt_io.resolve_checkpoint(path)
    except ckpt_io.CheckpointError as e:
        raise ConfigError(f"--init-from: {e}, nor a Hugging Face folder (with config.json)") from None
    run_cfg = ckpt_io.load_checkpoint_config(ckpt)
    if not isinstance(run_cfg, dict) or not isinstance(run_cfg.get("model"), dict):
        raise ConfigError(f"--init-from: {ckpt / ckpt_io.CONFIG_FILE} has no model section")
    if (run_cfg.get("train") or {}).get("lora"):
        raise ConfigError(
            f"--init-from {ckpt}: a LoRA checkpoint (adapters not merged); run tools/merge_lora.py {ckpt} OUT "
            "and start from OUT"
        )
    tokenizer = load_tokenizer(ckpt / ckpt_io.TOKENIZER_DIR) if (ckpt / ckpt_io.TOKENIZER_DIR).is_dir() else None
    return InitSource(ckpt, "checkpoint", dict(run_cfg["model"]), [ckpt / ckpt_io.MODEL_FILE], "", tokenizer)


def _param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = XLSTMLM(cfg)
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def merged_model_config(source: InitSource, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The source's model config with ``overrides`` applied; shape-changing overrides are errors."""
    base = from_dict(ModelConfig, source.model, "model")
    if not overrides:
        return to_dict(base)
    merged_raw = dict(to_dict(base))
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged_raw.get(key), dict):
            merged_raw[key] = {**merged_raw[key], **value}
        else:
            merged_raw[key] = value
    merged = from_dict(ModelConfig, merged_raw, "model")
    before, after = _param_shapes(base), _param_shapes(merged)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        diffs = config_differences(base, merged, "model")
        raise ConfigError(
            f"--init-from {source.path}: the model overrides ({'; '.join(diffs)}) change parameter shapes "
            f"({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''}); the model config comes from the source, "
            "so drop those model.* keys (only shape-neutral ones such as dropout or kernel_backend may change)"
        )
    return to_dict(merged)


def prepare_init(raw: dict[str, Any]) -> tuple[dict[str, Any], InitSource | None]:
    """``raw`` with its model section resolved from ``train.init_from`` (and the source), or unchanged."""
    path = (raw.get("train") or {}).get("init_from")
    if not path:
        return raw, None
    source = resolve_init_source(path)
    model = merged_model_config(source, raw.get("model"))
    return {**raw, "model": model}, source


def source_tokenizer_for(source: InitSource | None, spec: str) -> Tokenizer | None:
    """The tokenizer a run must use instead of building ``spec`` (sentencepiece: the source's own)."""
    if source is not None and spec == "sentencepiece":
        if not isinstance(source.tokenizer, SentencePieceTokenizer):
            raise ConfigError(
                f"data.tokenizer=sentencepiece with --init-from {source.path}, whose tokenizer is "
                f"{source.tokenizer.kind if source.tokenizer else 'unknown'}: a newly trained sentencepiece model "
                "would not match the weights; set data.tokenizer to the source's tokenizer"
            )
        return source.tokenizer
    return None


def _tokenizer_hint(source: InitSource) -> str:
    tok = source.tokenizer
    if isinstance(tok, ByteTokenizer):
        return "data.tokenizer=byte"
    if tok is not None and tok.kind == "huggingface":
        return f"data.tokenizer={source.path / ckpt_io.TOKENIZER_DIR / 'hf'} (the source's tokenizer)"
    if isinstance(tok, SentencePieceTokenizer):
        return "data.tokenizer=sentencepiece (reuses the source's model)"
    return f"data.tokenizer={source.path} (the folder's tokenizer)"


def check_tokenizer(source: InitSource, tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """Raise ConfigError when ``tokenizer`` is not the one the source was trained with."""
    problem = None
    if tokenizer.vocab_size > model_vocab_size:
        problem = f"the configured tokenizer has {tokenizer.vocab_size} tokens, the source model only {model_vocab_size}"
    elif source.tokenizer is not None:
        # Equal fingerprints: the same mapping. Otherwise (e.g. a byte tokenizer saved as a HF
        # tokenizer) equal vocabulary sizes and equal ids on the probe text are accepted.
        same = source.tokenizer.fingerprint() == tokenizer.fingerprint() or (
            source.tokenizer.vocab_size == tokenizer.vocab_size
            and source.tokenizer.encode(PROBE_TEXT) == tokenizer.encode(PROBE_TEXT)
        )
        if not same:
            problem = (
                f"the source's tokenizer is {source.tokenizer.kind} (vocab {source.tokenizer.vocab_size}) but "
                f"data.tokenizer gives {tokenizer.kind} (vocab {tokenizer.vocab_size}) with another id mapping"
            )
    elif source.hf_tokenizer is not None:
        theirs = list(source.hf_tokenizer.encode(PROBE_TEXT, add_special_tokens=False))
        if theirs != tokenizer.encode(PROBE_TEXT) or len(source.hf_tokenizer) != tokenizer.vocab_size:
            problem = (
                f"the folder's tokenizer (vocab {len(source.hf_tokenizer)}) and data.tokenizer ({tokenizer.kind}, "
                f"vocab {tokenizer.vocab_size}) give different ids for the same text"
            )
    if problem:
        raise ConfigError(f"--init-from {source.path}: tokenizer mismatch: {problem}; set {_tokenizer_hint(source)}")


def load_init_weights(model: nn.Module, source: InitSource) -> None:
    """Copy the source's weights into ``model`` (names and shapes must match; a tied head may be absent)."""
    state: dict[str, torch.Tensor] = {}
    for f in source.weight_files:
        for k, v in load_file(str(f)).items():
            if k.startswith(source.prefix):
                state[k[len(source.prefix):]] = v
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise ConfigError(
            f"--init-from {source.path}: its weights do not fit the model of its config: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


__all__ = [
    "InitSource",
    "check_tokenizer",
    "load_init_weights",
    "merged_model_config",
    "prepare_init",
    "resolve_init_source",
    "source_tokenizer_for",
]
