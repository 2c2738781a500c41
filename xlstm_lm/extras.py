"""Optional packages, the feature that needs each, and the extra that installs it.

``pip install xlstm-lm`` gives what ``python train.py``, export, evaluation on text
files and generation need. Features that build on bigger libraries come with an
extra (``pyproject.toml``): ``[train]`` (DeepSpeed, accelerate, datasets: token
shards, multi-GPU, ``--dataset`` sources), ``[finetune]`` (peft: ``train.lora``),
``[eval]`` (lm-eval, datasets), ``[kernels]`` (Triton), ``[dev]`` (all of them and
the test tools). Code that needs one imports it through ``require``, so a missing
package is a one-line error that names the extra, not an ImportError mid-run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .config_utils import ConfigError

#: import name -> (PyPI name, extra that installs it)
OPTIONAL = {
    "deepspeed": ("deepspeed", "train"),
    "accelerate": ("accelerate", "train"),
    "datasets": ("datasets", "train"),
    "peft": ("peft", "finetune"),
    "lm_eval": ("lm-eval", "eval"),
    "triton": ("triton", "kernels"),
}


class MissingExtra(ConfigError):
    """An optional package a requested feature needs is not installed; the message says
    which extra installs it."""


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` (e.g. ``"deepspeed"`` or ``"peft.tuners.lora"``) for ``feature``
    (what the user asked for, e.g. ``"train.lora"``), or raise ``MissingExtra``."""
    top = module.split(".")[0]
    if top not in OPTIONAL:
        raise KeyError(f"{top!r} is not an optional dependency listed in xlstm_lm.extras.OPTIONAL")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package, extra = OPTIONAL[top]
        raise MissingExtra(
            f"{feature} needs the {package} package, which cannot be imported ({e}); install it with "
            f"pip install 'xlstm-lm[{extra}]' (or pip install {package})"
        ) from None


__all__ = ["OPTIONAL", "MissingExtra", "require"]
