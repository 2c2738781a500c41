"""The few things that differ between the transformers releases we support.

``pyproject.toml`` states the supported range (the oldest is what the GPU image runs,
the newest is the committed lock); ``tests/hf/test_transformers_range.py`` runs the
Hugging Face tests on the oldest one too. Everything version-dependent is decided
here, once, by looking at what the installed transformers has, never by comparing
version strings, so an exported model folder (which bundles this file) works with
whichever release its user has.

* The generation cache is called ``cache`` in model inputs and outputs from
  transformers 5.24 on (``past_key_values`` and ``cache_params`` are deprecated
  aliases there) and ``past_key_values`` before. ``CACHE_NAME`` is the name the
  installed release uses; our ``forward`` accepts every name.
* Activation checkpointing is switched with ``activation_checkpointing_enable`` in
  newer releases (``gradient_checkpointing_enable`` is a deprecated alias there).
"""

from __future__ import annotations

from dataclasses import fields

from transformers.modeling_outputs import CausalLMOutputWithPast

#: the field of ``CausalLMOutputWithPast`` (and the ``generate`` model kwarg) that holds the cache
CACHE_NAME = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"

#: every name a caller may use for the cache, newest first
CACHE_ALIASES = ("cache", "past_key_values", "cache_params")


def output_cache(output):
    """The cache in a model output (``out.cache`` / ``out.past_key_values``), read
    under the installed release's own name so no deprecation shim is touched."""
    return output[CACHE_NAME] if CACHE_NAME in output.keys() else None


def causal_lm_output(cache=None, **fields_) -> CausalLMOutputWithPast:
    """``CausalLMOutputWithPast`` with the cache stored under the installed release's name."""
    return CausalLMOutputWithPast(**fields_, **{CACHE_NAME: cache})


def pick_cache(**by_name):
    """The one cache among the keyword arguments (``cache=``, ``past_key_values=``,
    ``cache_params=``), or None; two different ones are an error."""
    given = {name: c for name, c in by_name.items() if c is not None}
    if len({id(c) for c in given.values()}) > 1:
        raise ValueError(f"the cache was passed twice ({', '.join(given)}); pass it once, as {CACHE_NAME}=")
    return next(iter(given.values()), None)


def activation_checkpointing(model, enable: bool = True, **kwargs) -> None:
    """Switch transformers' activation (gradient) checkpointing on or off through the
    non-deprecated method of the installed release; ``kwargs`` go to torch's checkpoint."""
    if hasattr(model, "activation_checkpointing_enable"):
        if enable:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or None)
        else:
            model.activation_checkpointing_disable()
    elif enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None)
    else:
        model.gradient_checkpointing_disable()


def is_activation_checkpointing(model) -> bool:
    """Whether checkpointing is on, read through the non-deprecated property."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(model.is_gradient_checkpointing)


__all__ = [
    "CACHE_ALIASES",
    "CACHE_NAME",
    "activation_checkpointing",
    "causal_lm_output",
    "is_activation_checkpointing",
    "output_cache",
    "pick_cache",
]
