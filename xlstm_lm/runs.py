"""What a path given to a tool is, and how to load a model from it without running
anything its author put there.

Today this module knows Hugging Face folders; the run-dir / checkpoint / DeepSpeed
loaders still live with their callers and move here with the one-training-loop work
(issue 11), so that one place decides what every path is.

Remote code only on request: a folder of our own ``model_type`` (``xlstm_lm``) loads
with the classes of the installed package, never with the ``.py`` files it carries
(an export ships them for users without xlstm_lm); any other folder that needs its
own code loads only with ``trust_remote_code=True`` (``--trust-remote-code`` on the
command line), as in transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config_utils import ConfigError

MODEL_TYPE = "xlstm_lm"
SP_MODEL_FILE = "sentencepiece.model"


def is_hf_folder(path: str | Path) -> bool:
    """A Hugging Face model folder: ``config.json`` that is neither a training checkpoint's
    (``config.yaml``) nor a DeepSpeed run's (its resolved config sits beside ``deepspeed/``)."""
    path = Path(path)
    return (path / "config.json").is_file() and not (path / "config.yaml").is_file() and not (path / "deepspeed").is_dir()


def hf_model_type(path: str | Path) -> str | None:
    """``model_type`` of a Hugging Face folder's config.json (None when it has none)."""
    config = Path(path) / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{config} cannot be read as JSON ({e}); is {path} a Hugging Face model folder?") from None


def _refuse_remote_code(path: Path, e: Exception) -> None:
    if "trust_remote_code" in str(e):
        raise ConfigError(
            f"{path} (model_type {hf_model_type(path)!r}) needs the Python code it carries to load; that runs "
            "code from whoever made the folder: pass --trust-remote-code if you trust its source"
        ) from None


def load_hf_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    """The transformers tokenizer of a Hugging Face folder (our exports: the installed classes)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if hf_model_type(path) == MODEL_TYPE and (path / SP_MODEL_FILE).is_file():
        from .hf.tokenization import XLSTMLMSentencePieceTokenizer

        return XLSTMLMSentencePieceTokenizer.from_pretrained(path)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        _refuse_remote_code(path, e)
        raise


def load_hf_folder(path: str | Path, trust_remote_code: bool = False, **kwargs: Any) -> tuple[Any, Any]:
    """``(causal LM, tokenizer)`` of a Hugging Face folder; ``kwargs`` go to ``from_pretrained``."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if hf_model_type(path) == MODEL_TYPE:
        from .hf.modeling import XLSTMLMForCausalLM

        model = XLSTMLMForCausalLM.from_pretrained(path, **kwargs)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        except ValueError as e:
            _refuse_remote_code(path, e)
            raise
    return model, load_hf_tokenizer(path, trust_remote_code)


__all__ = ["MODEL_TYPE", "hf_model_type", "is_hf_folder", "load_hf_folder", "load_hf_tokenizer"]
