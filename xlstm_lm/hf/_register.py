"""Register ``xlstm_lm`` with transformers' ``AutoConfig`` / ``AutoModelForCausalLM``,
lazily: ``import xlstm_lm`` must stay fast and must work without transformers.

Importing ``transformers.PreTrainedModel`` costs seconds, so ``install()`` does not
import transformers. It registers at once if transformers' auto classes are already
loaded; otherwise it adds an import hook that registers right after transformers
loads ``models.auto.configuration_auto`` (the config) and ``models.auto.modeling_auto``
(the model), which every ``AutoConfig`` / ``AutoModelForCausalLM`` use goes through.
``register()`` does it eagerly. This module imports only the standard library.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings

_CONFIG_MODULE = "transformers.models.auto.configuration_auto"
_MODEL_MODULE = "transformers.models.auto.modeling_auto"
_OUR_MODELING = f"{__package__}.modeling"
_done: set[str] = set()


def register_config() -> None:
    """``AutoConfig`` knows model_type 'xlstm_lm' (idempotent)."""
    if "config" in _done:
        return
    from transformers import AutoConfig

    from .configuration import XLSTMLMConfig

    AutoConfig.register(XLSTMLMConfig.model_type, XLSTMLMConfig, exist_ok=True)
    _done.add("config")


def register_model() -> None:
    """``AutoModelForCausalLM`` maps ``XLSTMLMConfig`` to ``XLSTMLMForCausalLM`` (idempotent)."""
    if "model" in _done:
        return
    ours = sys.modules.get(_OUR_MODELING)
    if ours is not None and not hasattr(ours, "XLSTMLMForCausalLM"):
        # Our modeling module is executing and its own transformers imports loaded the
        # auto module midway: the hook registers once it has run (_after_our_modeling).
        return
    register_config()
    from transformers import AutoModelForCausalLM

    from .configuration import XLSTMLMConfig
    from .modeling import XLSTMLMForCausalLM

    AutoModelForCausalLM.register(XLSTMLMConfig, XLSTMLMForCausalLM, exist_ok=True)
    _done.add("model")


def _after_our_modeling() -> None:
    if _MODEL_MODULE in sys.modules:
        register_model()


def register() -> None:
    """Register config and model now (imports transformers)."""
    register_model()


def _safely(fn) -> None:
    # A failure here must never break the user's `import transformers`.
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"xlstm_lm could not register with transformers' Auto classes: {e!r}", stacklevel=3)


class _LoaderWithCallback(importlib.abc.Loader):
    """Delegates to the real loader, then calls ``callback`` once the module is executed."""

    def __init__(self, loader, callback):
        self._loader, self._callback = loader, callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _safely(self._callback)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _AutoImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of the two transformers auto modules (and of
    our modeling module, for when importing it is what loads transformers' auto module)."""

    _callbacks = {_CONFIG_MODULE: register_config, _MODEL_MODULE: register_model, _OUR_MODELING: _after_our_modeling}

    def find_spec(self, fullname, path, target=None):
        callback = self._callbacks.get(fullname)
        if callback is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _LoaderWithCallback(spec.loader, callback)
        return spec


_hook = _AutoImportHook()


def install() -> None:
    """Register now where transformers' auto modules are loaded, else on their import."""
    if _CONFIG_MODULE in sys.modules:
        _safely(register_config)
    if _MODEL_MODULE in sys.modules:
        _safely(register_model)
    if len(_done) < 2 and _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)


__all__ = ["install", "register", "register_config", "register_model"]
