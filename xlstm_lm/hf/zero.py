"""A DeepSpeed (ZeRO 0-3) run becomes one consolidated checkpoint folder.

A run of the DeepSpeed loop (``xlstm_lm.training.distributed``) leaves::

    run_dir/config.json                  the resolved run config (JSON)
    run_dir/metrics.jsonl
    run_dir/deepspeed/latest             the newest tag
    run_dir/deepspeed/step_XXXXXXX/      every rank's ZeRO partition of weights and optimizer

and its tokenizer stays with the token shards it read (``data.shards``: ``manifest.json``
and the ``tokenizer/`` folder it names). ``consolidate_run`` gathers the partitions into
one fp32 model (DeepSpeed's ``zero_to_fp32``), checks that it fits the architecture of
the run config, and writes a checkpoint folder as the single-process
trainer does (``model.safetensors``, ``config.yaml``, ``tokenizer/``), which
tools/export_hf.py, eval/perplexity.py and ``--init-from`` read. ``export.py`` calls it
for a DeepSpeed run dir given directly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_model

from ..config_utils import ConfigError, from_dict
from ..data.tokenizers import ByteTokenizer, Tokenizer, load_tokenizer
from ..extras import require
from ..models import XLSTMLM
from ..training import checkpoint as ckpt_io
from ..training.lora import LoraSettings, apply_lora, merge_lora
from .configuration import validated_model_config

DS_DIR = "deepspeed"
"""The run dir's DeepSpeed checkpoint folder (``training.distributed.DS_DIR``)."""
RUN_CONFIG = "config.json"


class ZeroError(RuntimeError):
    """The DeepSpeed run cannot be consolidated; the message says what is missing."""


@dataclass(frozen=True)
class DeepSpeedCheckpoint:
    """One tag of a DeepSpeed run: ``run_dir/deepspeed/<tag>``."""

    run_dir: Path
    tag: str

    @property
    def ds_dir(self) -> Path:
        return self.run_dir / DS_DIR

    @property
    def path(self) -> Path:
        return self.ds_dir / self.tag

    @property
    def step(self) -> int | None:
        try:
            return int(self.tag.split("_")[-1])
        except ValueError:
            return None


def _tags(ds_dir: Path) -> list[str]:
    return sorted(p.name for p in ds_dir.iterdir() if p.is_dir() and any(p.glob("*model_states.pt")))


def find_deepspeed_checkpoint(path: str | Path, tag: str | None = None) -> DeepSpeedCheckpoint | None:
    """The DeepSpeed checkpoint at ``path`` (a run dir, its ``deepspeed/`` folder or one
    tag folder in it), or None when ``path`` is not one. ``tag`` None: the one
    ``latest`` names (else the newest)."""
    path = Path(path)
    if (path / DS_DIR).is_dir():
        run_dir = path
    elif path.name == DS_DIR and path.is_dir():
        run_dir = path.parent
    elif path.parent.name == DS_DIR and any(path.glob("*model_states.pt")):
        run_dir, tag = path.parent.parent, tag or path.name
    else:
        return None
    ds_dir = run_dir / DS_DIR
    tags = _tags(ds_dir)
    if tag is None:
        latest = ds_dir / "latest"
        tag = latest.read_text().strip() if latest.is_file() else (tags[-1] if tags else None)
    if tag is None or tag not in tags:
        raise ZeroError(
            f"{ds_dir} has no checkpoint {tag!r} (found: {', '.join(tags) or 'none'}); "
            + ("pass one of those as the tag" if tags else "the run saved no checkpoint yet")
        )
    return DeepSpeedCheckpoint(run_dir, tag)


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        raise ZeroError(f"{path} is missing: the DeepSpeed loop writes the run config there; without it the "
                        "architecture of the weights is unknown")
    cfg = json.loads(path.read_text())
    if not isinstance(cfg.get("model"), dict):
        raise ZeroError(f"{path} has no 'model' section")
    return cfg


def _tokenizer_from(path: Path) -> Tokenizer:
    """A tokenizer from a shard folder (its manifest), a saved tokenizer folder, or 'byte'."""
    if str(path) == "byte":
        return ByteTokenizer()
    manifest_file = path / "manifest.json"
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        info = manifest.get("tokenizer") or {}
        tok = load_tokenizer(path / info.get("dir", "tokenizer"))
        if info.get("fingerprint") and tok.fingerprint() != info["fingerprint"]:
            raise ZeroError(f"the tokenizer in {path} does not match the fingerprint its manifest.json records")
        return tok
    return load_tokenizer(path)


def find_run_tokenizer(run_dir: Path, run_cfg: dict[str, Any], tokenizer: str | Path | None = None) -> Tokenizer:
    """The tokenizer a DeepSpeed run trained with.

    ``tokenizer`` (a shard folder, a saved tokenizer folder or 'byte') wins; else
    ``run_dir/tokenizer/``; else the shards named by the config's ``data.shards`` (as
    written, then relative to the run dir and to its parent). Raises ZeroError naming
    every place looked at when none holds it.
    """
    if tokenizer is not None:
        try:
            return _tokenizer_from(Path(tokenizer))
        except (OSError, ValueError) as e:
            raise ZeroError(f"cannot load the tokenizer {tokenizer}: {e}") from None
    candidates = [run_dir / ckpt_io.TOKENIZER_DIR]
    shards = (run_cfg.get("data") or {}).get("shards")
    if shards:
        p = Path(shards).expanduser()
        candidates += [p] if p.is_absolute() else [p, run_dir / p, run_dir.parent / p]
    problems = []
    for c in dict.fromkeys(candidates):
        if not c.is_dir():
            problems.append(f"{c} (missing)")
            continue
        try:
            return _tokenizer_from(c)
        except (OSError, ValueError, ZeroError) as e:
            problems.append(f"{c} ({e})")
    raise ZeroError(
        f"cannot find the tokenizer of the DeepSpeed run {run_dir}: its config names data.shards={shards!r}; looked in "
        f"{'; '.join(problems)}. Pass the tokenizer explicitly (--tokenizer SHARD_FOLDER, a saved tokenizer "
        "folder or 'byte')"
    )


def gather_weights(ckpt: DeepSpeedCheckpoint) -> dict[str, Any]:
    """The weights of a DeepSpeed checkpoint under the model's own parameter names.

    Read from the ``model.safetensors`` copy the DeepSpeed loop writes beside the engine's
    files at every save (``training.distributed.save_weights_copy``): no pickle is
    loaded. Checkpoints of older versions lack it; their ZeRO partitions are gathered
    with DeepSpeed's ``zero_to_fp32``, which unpickles them (``torch.load(weights_only=
    False)``, i.e. it can run code): a note says so, and only runs you trust should be
    read that way. Tied parameters may come back under two names (the partition path):
    the caller saves through the model (``save_model`` stores a tied tensor once).
    """
    copy = ckpt.path / ckpt_io.MODEL_FILE
    if copy.is_file():
        return load_file(str(copy))
    print(f"note: {ckpt.path} has no {ckpt_io.MODEL_FILE} (saved by an older xlstm_lm); gathering the ZeRO "
          "partitions with DeepSpeed's zero_to_fp32, which unpickles them: only do this for runs you trust")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    zero_to_fp32 = require("deepspeed.utils.zero_to_fp32", f"reading the DeepSpeed checkpoint {ckpt.ds_dir}")
    state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(ckpt.ds_dir), tag=ckpt.tag)
    return {ckpt_io.unwrapped_name(k): v for k, v in state.items()}


def consolidated_model(ckpt: DeepSpeedCheckpoint, run_cfg: dict[str, Any]):
    """An ``XLSTMLM`` of the run config's architecture holding the gathered weights."""
    try:
        model_cfg = validated_model_config(run_cfg["model"])
    except ConfigError as e:
        raise ZeroError(f"{ckpt.run_dir / RUN_CONFIG}: {e}") from None
    weights = gather_weights(ckpt)
    model = XLSTMLM(model_cfg)
    lora = (run_cfg.get("train") or {}).get("lora")
    if lora:
        # a LoRA run's partitions hold base weights and adapters under peft's names
        model = apply_lora(model, from_dict(LoraSettings, lora, "train.lora"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied embeddings are one parameter under two names; the checkpoint may keep only one.
    tied = {"lm_head.weight"} if model_cfg.tie_embeddings and "embedding.weight" in weights else set()
    missing = sorted(set(missing) - tied)
    if missing or unexpected:
        raise ZeroError(
            f"the consolidated weights of {ckpt.path} do not fit the architecture in {ckpt.run_dir / RUN_CONFIG}: "
            f"missing {missing[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    if lora:
        model = merge_lora(model)  # folded in: a plain XLSTMLM, as tools/merge_lora.py gives
    return model.eval()


def consolidate_run(
    path: str | Path, out_dir: str | Path, tag: str | None = None, tokenizer: str | Path | None = None
) -> Path:
    """Consolidate the DeepSpeed run at ``path`` (run dir, its deepspeed/ folder or a tag
    folder) into the checkpoint folder ``out_dir``; returns ``out_dir``."""
    ckpt = find_deepspeed_checkpoint(path, tag)
    if ckpt is None:
        raise ZeroError(f"{path} is not a DeepSpeed run (no {DS_DIR}/ folder with checkpoints)")
    run_cfg = read_run_config(ckpt.run_dir)
    # Found before the (slow) gathering, so a missing tokenizer fails fast.
    tok = find_run_tokenizer(ckpt.run_dir, run_cfg, tokenizer)
    vocab = int(run_cfg["model"].get("vocab_size", 0))
    if tok.vocab_size > vocab:
        raise ZeroError(f"the tokenizer has {tok.vocab_size} tokens but the model only {vocab}: "
                        "it is not the tokenizer this run trained with")
    model = consolidated_model(ckpt, run_cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / ckpt_io.MODEL_FILE))
    if (run_cfg.get("train") or {}).get("lora"):
        run_cfg = {**run_cfg, "train": {**run_cfg["train"], "lora": None}}  # merged: a plain model
    ckpt_io.dump_config(run_cfg, out / ckpt_io.CONFIG_FILE)
    tok.save(out / ckpt_io.TOKENIZER_DIR)
    (out / "consolidated_from.json").write_text(
        json.dumps({"run_dir": str(ckpt.run_dir), "tag": ckpt.tag, "step": ckpt.step}, indent=2) + "\n"
    )
    return out


__all__ = ["DS_DIR", "DeepSpeedCheckpoint", "ZeroError", "consolidate_run", "consolidated_model",
           "find_deepspeed_checkpoint", "find_run_tokenizer", "gather_weights", "read_run_config"]
