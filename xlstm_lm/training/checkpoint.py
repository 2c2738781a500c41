"""Checkpoints: ``run_dir/checkpoints/step_XXXXXXX/`` plus a ``latest`` pointer file.

A checkpoint folder holds:

* ``model.safetensors``: the model weights;
* ``trainer_state.pt``: step, optimizer state, RNG states, the training-window
  generator state (``torch.save``; loaded with ``weights_only=True``);
* ``config.yaml``: the fully resolved run config;
* ``tokenizer/``: the tokenizer (``load_tokenizer`` reads it).

It is written into a temporary folder that is renamed into place when complete;
``checkpoints/latest`` (the folder's name) is replaced atomically afterwards, so a
crash at any point leaves ``latest`` naming a complete checkpoint. Should a
checkpoint still be damaged later (a truncated copy, a full disk, a deleted file),
``latest_checkpoint`` verifies it and falls back, with a warning, to the newest
complete one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_model, save_model
from torch import nn

from ..config_utils import plain
from ..data.tokenizers import Tokenizer

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
_STEP_RE = re.compile(r"^step_(\d{7,})$")


def unwrapped_name(name: str) -> str:
    """A parameter's name in the plain model: the DeepSpeed loop's run options wrap blocks
    (activation checkpointing: ``blocks.i.block.*``; torch.compile: ``_orig_mod.``)."""
    return name.replace(".block.", ".").replace("_orig_mod.", "")


class CheckpointError(RuntimeError):
    """A path is not a usable checkpoint: not a run dir or checkpoint folder, weights of
    another architecture, NaN/Inf values."""


def dump_config(config: dict[str, Any], path: Path) -> None:
    """Write a plain config dict as YAML (keys in definition order)."""
    path.write_text(yaml.safe_dump(plain(config), sort_keys=False))


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    state: dict[str, Any],
    config: dict[str, Any],
    tokenizer: Tokenizer,
    keep_last: int,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, keep the newest ``keep_last``."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / MODEL_FILE))
    torch.save({"step": step, **state}, tmp / STATE_FILE)
    dump_config(config, tmp / CONFIG_FILE)
    tokenizer.save(tmp / TOKENIZER_DIR)
    if final.exists():
        # Same step saved before (e.g. an earlier run stopped here): replace it.
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer_tmp = root / f".{LATEST}.tmp{os.getpid()}"
    pointer_tmp.write_text(final.name + "\n")
    os.replace(pointer_tmp, root / LATEST)
    prune_checkpoints(run_dir, keep_last)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_problem(path: str | Path) -> str | None:
    """Why checkpoint folder ``path`` is unusable (missing or truncated files), or None if complete.

    Cheap structural checks, no tensor is read: the safetensors header parses and
    the file is as long as the header says; trainer_state.pt is a readable zip
    archive (torch.save's format, its index sits at the very end); the config and
    the tokenizer are present.
    """
    path = Path(path)
    if not path.is_dir():
        return "the folder is missing"
    for name in (MODEL_FILE, STATE_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            return f"{name} is missing"
    if not (path / TOKENIZER_DIR).is_dir() or not any((path / TOKENIZER_DIR).iterdir()):
        return f"{TOKENIZER_DIR}/ is missing or empty"
    model_file = path / MODEL_FILE
    size = model_file.stat().st_size
    try:
        with model_file.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("header length past the end of the file")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError) as e:
        return f"{MODEL_FILE} is unreadable ({e})"
    if size != 8 + n + end:
        return f"{MODEL_FILE} is truncated ({size} bytes, its header says {8 + n + end})"
    try:
        with zipfile.ZipFile(path / STATE_FILE) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        return f"{STATE_FILE} is unreadable ({e})"
    return None


def nonfinite_weights(path: str | Path) -> str | None:
    """What is non-finite in checkpoint ``path``'s weights (read one tensor at a time), or None."""
    from safetensors import safe_open

    with safe_open(str(Path(path) / MODEL_FILE), "pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            count = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
            if count:
                return f"{MODEL_FILE} holds {count} NaN/Inf values in {name} (damaged, or saved from a diverged run)"
    return None


def latest_checkpoint(run_dir: str | Path, verify_weights: bool = False, warn: bool = True) -> Path | None:
    """The checkpoint ``latest`` names, or, if that one is damaged, the newest complete one.

    None when the run has no checkpoint. Falling back warns, naming what is wrong;
    when no complete checkpoint is left it is an error. ``verify_weights`` (a resume)
    also reads the weights: NaN/Inf values make a checkpoint unusable too. ``warn=False``
    for lookups that only peek (the command line before the loop), so a fallback is
    reported once, by the loop that uses it.
    """
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    candidates = list_checkpoints(run_dir)

    def problem_of(path: Path) -> str | None:
        return checkpoint_problem(path) or (nonfinite_weights(path) if verify_weights else None)

    damaged = None
    if pointer.is_file():
        path = damaged = root / pointer.read_text().strip()
        problem = problem_of(path)
        if problem is None:
            return path
        what = f"{pointer} names {path.name}, which is unusable: {problem}"
    elif candidates:
        what = f"{pointer} is missing"
    else:
        return None
    for older in reversed(candidates):
        if older != damaged and problem_of(older) is None:
            if warn:
                warnings.warn(f"{what}; falling back to {older.name}, the newest complete checkpoint", stacklevel=2)
            return older
    raise FileNotFoundError(
        f"{what}, and no complete checkpoint is left in {root} "
        f"(found {[p.name for p in candidates]}); start a new run dir"
    )


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a run dir (its ``latest``, else newest) or a checkpoint folder."""
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        return path
    if (path / CHECKPOINTS).is_dir():
        latest = latest_checkpoint(path)
        found = latest or (list_checkpoints(path) or [None])[-1]
        if found is not None:
            return found
        raise CheckpointError(f"run dir {path} has no complete checkpoint under {CHECKPOINTS}/")
    raise CheckpointError(
        f"{path} is neither a run dir (with {CHECKPOINTS}/) nor a checkpoint folder (with {MODEL_FILE})"
    )


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (never the one ``latest`` names)."""
    checkpoints = list_checkpoints(run_dir)
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    protected = pointer.read_text().strip() if pointer.is_file() else None
    for path in checkpoints[: max(0, len(checkpoints) - keep_last)]:
        if path.name != protected:
            shutil.rmtree(path)


def load_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """The trainer state dict saved by ``save_checkpoint`` (includes 'step')."""
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)


def load_checkpoint_weights(model: nn.Module, path: str | Path) -> None:
    """Load the checkpoint's weights into ``model`` (strict: names and shapes must match;
    every value must be finite)."""
    missing, unexpected = load_model(model, str(Path(path) / MODEL_FILE), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}; was it written by another model version?"
        )
    with torch.no_grad():
        bad = [name for name, p in model.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds NaN/Inf weights ({', '.join(bad[:3])}): it is damaged or was saved from a "
            "diverged run; use an earlier checkpoint"
        )


def load_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The resolved run config (plain dict) saved with the checkpoint."""
    return yaml.safe_load((Path(path) / CONFIG_FILE).read_text())


__all__ = [
    "CHECKPOINTS",
    "CheckpointError",
    "CONFIG_FILE",
    "LATEST",
    "TOKENIZER_DIR",
    "checkpoint_problem",
    "dump_config",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint_config",
    "load_checkpoint_state",
    "load_checkpoint_weights",
    "nonfinite_weights",
    "prune_checkpoints",
    "resolve_checkpoint",
    "save_checkpoint",
    "unwrapped_name",
]
