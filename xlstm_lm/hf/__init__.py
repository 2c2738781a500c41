"""Hugging Face integration: config, causal-LM wrapper, recurrent cache, export.

``import xlstm_lm`` registers ``AutoConfig`` / ``AutoModelForCausalLM`` for model_type
'xlstm_lm' lazily (see ``_register``), so it neither imports transformers nor fails
without it. The public names below are imported on first use:

- ``XLSTMLMConfig``, ``XLSTMLMForCausalLM``, ``XLSTMLMCache``;
- ``export_checkpoint`` / ``export_model`` (a self-contained HF folder, loadable with
  ``trust_remote_code=True`` where xlstm_lm is not installed);
- ``register()``: register with the Auto classes now.
"""

from __future__ import annotations

import importlib

from ._register import install as _install
from ._register import register

_install()

_LAZY = {
    "XLSTMLMConfig": ".configuration",
    "XLSTMLMForCausalLM": ".modeling",
    "XLSTMLMPreTrainedModel": ".modeling",
    "XLSTMLMCache": ".cache",
    "export_checkpoint": ".export",
    "export_model": ".export",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["register", *_LAZY]
