"""peft LoRA for the block-diagonal ``HeadwiseLinear`` layers (paper mLSTM q/k/v, sLSTM gates).

peft adapts ``nn.Linear`` and a few other built-in layer types; other types take
adapters through its custom-module hook, ``LoraConfig._register_custom_module``,
which ``register_headwise_lora`` calls with ``{HeadwiseLinear: HeadwiseLoraLinear}``.

**The adapter is per head.** The base weight ``W`` is ``(H, out/H, in/H)``: head ``h``
maps input block ``h`` to output block ``h``, and nothing else connects. A dense
low-rank update ``B A`` of the full ``in -> out`` map would add cross-head terms, so the
adapted layer would no longer be block-diagonal and could not be merged back into
``W``: a merged model would compute a different function from the adapted one (or
need a dense layer, changing the architecture and every exporter). Here each head has
its own adapter::

    A: (H, r, in/H)    B: (H, out/H, r)    delta W_h = (alpha / r) * B_h @ A_h

so ``delta W`` has the shape of ``W``, and ``W + delta W`` computes exactly what the
adapted layer computes (up to fp rounding): ``merge_lora`` leaves a plain
``HeadwiseLinear`` under its original name and shape. ``lora_A`` and ``lora_B`` are
themselves ``HeadwiseLinear`` layers (``in -> H r`` and ``H r -> out`` with ``H``
heads), so the forward pass is two more block-diagonal maps.

Parameter count and rank: the adapter has ``r * (in + out)`` parameters, the same as a
rank-``r`` LoRA of an ``nn.Linear(in, out)``, and the update's rank is up to
``H * min(r, in/H, out/H)``. Where ``r`` reaches the block size (the paper mLSTM's
q/k/v have 4 x 4 blocks, ``mlstm.qkv_blocksize``) each block's update is full rank:
the adapter can then express any change of that layer, with more parameters than the
layer itself (``in * out / H``). ``r`` is kept as given rather than capped, as peft
does for an ``nn.Linear`` narrower than ``r``, so ``alpha / r`` means the same on every
adapted layer.

peft is an optional dependency (the ``finetune`` extra), so this module imports it at the
top and is itself imported only where LoRA is used.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from .basic import HeadwiseLinear


def _unsupported(option: str, value: Any) -> ValueError:
    return ValueError(
        f"LoraConfig({option}={value!r}) is not supported on the head-wise layers (HeadwiseLinear: the paper "
        "mLSTM's q_proj/k_proj/v_proj, the sLSTM's igate/fgate/zgate/ogate); leave it at its default, or drop "
        "those names from target_modules"
    )


class HeadwiseLoraLinear(nn.Module, LoraLayer):
    """LoRA layer around a ``HeadwiseLinear``: one rank-``r`` adapter per head (see the module
    docstring). Follows peft's ``lora.Linear``: adapters ``lora_A`` / ``lora_B`` per adapter name,
    dropout on the adapter input, ``merge`` / ``unmerge`` / ``get_delta_weight``."""

    def __init__(
        self,
        base_layer: HeadwiseLinear,
        adapter_name: str,
        config,
        r: int = 0,
        lora_alpha: float = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer, **kwargs)
        base = self.get_base_layer()
        # set explicitly: peft versions differ in what they infer for a layer type they do not know
        self.in_features, self.out_features = base.in_features, base.out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config, **kwargs: Any) -> None:
        """Add adapter ``adapter_name``: ``lora_A`` ``(H, r, in/H)``, ``lora_B`` ``(H, out/H, r)``.

        Only plain LoRA (optionally rsLoRA scaling) is implemented; options that change the
        adapter's form (DoRA, bias, data-dependent initialisations) are refused by name."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        if getattr(config, "use_dora", False):
            raise _unsupported("use_dora", config.use_dora)
        if getattr(config, "lora_bias", False):
            raise _unsupported("lora_bias", config.lora_bias)
        init = getattr(config, "init_lora_weights", True)
        if not (init is True or init is False or init == "gaussian"):
            raise _unsupported("init_lora_weights", init)
        base = self.get_base_layer()
        H = base.num_heads
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.lora_A[adapter_name] = HeadwiseLinear(self.in_features, H * r, H, bias=False)
        self.lora_B[adapter_name] = HeadwiseLinear(H * r, self.out_features, H, bias=False)
        self.lora_bias[adapter_name] = False
        self.use_dora[adapter_name] = False
        self.use_rslora[adapter_name] = bool(config.use_rslora)
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if config.use_rslora else r)
        self.reset_lora_parameters(adapter_name, init)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=getattr(config, "inference_mode", False))

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights) -> None:
        """B = 0 (the adapted layer starts as the base layer); each head's A as peft's
        ``nn.Linear(in/H, r)`` A: Kaiming-uniform (bound 1 / sqrt(in/H)), or N(0, 1/r) for
        'gaussian'. Written out because ``nn.init.kaiming_uniform_`` would take the fan-in of
        the stacked ``(H, r, in/H)`` tensor as ``r * in/H``."""
        if init_lora_weights is False or adapter_name not in self.lora_A:
            return
        a, b = self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight
        with torch.no_grad():
            if init_lora_weights == "gaussian":
                a.normal_(0.0, 1.0 / self.r[adapter_name])
            else:
                bound = 1.0 / math.sqrt(a.shape[-1])
                a.uniform_(-bound, bound)
            b.zero_()

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``scaling * B_h @ A_h`` for every head: ``(H, out/H, in/H)``, the base weight's shape.
        Computed in at least float32 (half-precision matmuls on CPU are slow and lose bits)
        and returned in the adapter's dtype."""
        a, b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        compute = torch.promote_types(b.dtype, torch.float32)
        delta = torch.einsum("hor,hri->hoi", b.to(compute), a.to(compute)) * self.scaling[adapter]
        return delta.to(b.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the active (or the named) adapters into the base weight."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        weight = self.get_base_layer().weight
        for name in adapter_names:
            if name not in self.lora_A:
                continue
            delta = self.get_delta_weight(name).to(weight.dtype)
            if safe_merge:
                merged = weight.data + delta
                if not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
                weight.data = merged
            else:
                weight.data += delta
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract the merged adapters from the base weight again."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.lora_A:
                weight.data -= self.get_delta_weight(name).to(weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``base(x) + scaling * B(A(dropout(x)))`` per active adapter (as peft's ``lora.Linear``)."""
        self._check_forward_args(x, *args, **kwargs)
        adapter_names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        result_dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_A, lora_B = self.lora_A[name], self.lora_B[name]
            x_a = self._cast_input_dtype(x, lora_A.weight.dtype)
            result = result + lora_B(lora_A(self.lora_dropout[name](x_a))) * self.scaling[name]
        return result.to(result_dtype)

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


#: peft's custom-module mapping for our layer types (``LoraConfig._register_custom_module``).
CUSTOM_LORA_MODULES: dict[type[nn.Module], type[nn.Module]] = {HeadwiseLinear: HeadwiseLoraLinear}


def register_headwise_lora(config):
    """Let a ``peft.LoraConfig`` adapt ``HeadwiseLinear`` layers (returns ``config``).

    Needed whenever ``target_modules`` names a head-wise layer (``q_proj``, ``k_proj``,
    ``v_proj``, the sLSTM's gates), e.g. with ``get_peft_model`` on the Hugging Face
    model: without it peft stops with "Target module HeadwiseLinear(...) is not
    supported". The mapping is not saved with a peft adapter config, so register it
    again on the config used to load saved adapters."""
    config._register_custom_module(CUSTOM_LORA_MODULES)
    return config


__all__ = ["CUSTOM_LORA_MODULES", "HeadwiseLoraLinear", "register_headwise_lora"]
