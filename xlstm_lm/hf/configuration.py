"""``XLSTMLMConfig``: the Hugging Face config of every xlstm_lm backbone.

It holds the project's ``ModelConfig`` as nested plain data under ``model`` (the
same keys as the ``model:`` section of a run config), validated through
``config_utils.from_dict`` on construction: an unknown key, e.g. one written by a
newer version, is an error that names it. Everything transformers reads from a
config (``vocab_size``, ``hidden_size``, ``num_hidden_layers``,
``tie_word_embeddings``) is derived from that section, never stored twice.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from ..config import ModelConfig
from ..config_utils import ConfigError, from_dict, plain, to_dict


def validated_model_config(model: ModelConfig | dict | None) -> ModelConfig:
    """``ModelConfig`` from a config object or plain data; unknown keys raise ``ConfigError``."""
    if isinstance(model, ModelConfig):
        return model
    try:
        return from_dict(ModelConfig, model or {}, "model")
    except ConfigError as e:
        raise ConfigError(
            f"XLSTMLMConfig: {e}. If this config.json was written by a newer xlstm_lm, upgrade xlstm_lm "
            "(or re-export the model with the version you have)"
        ) from None


class XLSTMLMConfig(PretrainedConfig):
    """Config of ``XLSTMLMForCausalLM``: ``model`` is the ``ModelConfig`` as plain data.

    Args:
        model: a ``ModelConfig`` or its plain-data form (keys of the run config's
            ``model:`` section); ``None`` gives the defaults.
        use_cache: return the recurrent state (``past_key_values``) from forward.
        bos_token_id, eos_token_id, pad_token_id: special token ids (generation defaults).
        **kwargs: the usual ``PretrainedConfig`` arguments (token ids, dtype, ...).
    """

    model_type = "xlstm_lm"

    # A classic (v4-style) __init__ rather than dataclass fields: it works with
    # transformers 4.x and 5.x alike, which matters for exported remote code.
    def __init__(
        self,
        model: ModelConfig | dict | None = None,
        use_cache: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        cfg = validated_model_config(model)
        self.model = plain(to_dict(cfg))
        self.use_cache = use_cache
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id
        # Derived from the model section; a stale value in a config.json cannot disagree.
        kwargs.pop("tie_word_embeddings", None)
        super().__init__(tie_word_embeddings=cfg.tie_embeddings, **kwargs)

    @property
    def model_config(self) -> ModelConfig:
        """The validated ``ModelConfig`` (built fresh from ``self.model``)."""
        return validated_model_config(self.model)

    @property
    def vocab_size(self) -> int:
        return int(self.model["vocab_size"])

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        # transformers' resize_token_embeddings writes this; keep the section the single source.
        self.model = plain(to_dict(validated_model_config({**self.model, "vocab_size": int(value)})))

    @property
    def hidden_size(self) -> int:
        return int(self.model["d_model"])

    @property
    def num_hidden_layers(self) -> int:
        return int(self.model["num_blocks"])


__all__ = ["XLSTMLMConfig", "validated_model_config"]
