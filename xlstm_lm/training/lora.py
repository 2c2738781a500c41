"""LoRA adapters (peft) on the plain ``XLSTMLM``, and merging them back into the weights.

``train.lora: {r, alpha, dropout, target_modules}`` makes a run train low-rank
adapters only. They are injected with ``peft.inject_adapter_in_model`` into the
model as built, after the ``--init-from`` weights are loaded and before the
optimizer is built; the model stays an ``XLSTMLM`` (its ``forward`` and
``generate`` are unchanged), every non-adapter parameter is frozen. peft renames
a wrapped layer's weight ``<name>.base_layer.weight`` and adds
``<name>.lora_A.default.weight`` / ``lora_B``: a checkpoint of a LoRA run holds
the base weights and the adapters under those names, and resumes exactly.

Two layer types take adapters: ``nn.Linear`` (peft's own LoRA layer) and the
block-diagonal ``HeadwiseLinear`` (the paper mLSTM's q/k/v, the sLSTM's gates),
whose adapters are per head so that they merge exactly
(``xlstm_lm.layers.lora.HeadwiseLoraLinear``).

``merge_lora(model)`` folds the adapters into the base layers and removes the peft
wrappers, giving a plain ``XLSTMLM`` state dict (original names and shapes):
``tools/merge_lora.py`` writes it as an ordinary checkpoint (config without
``train.lora``), which ``tools/export_hf.py`` exports.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_model
from torch import nn

from ..config import ModelConfig
from ..config_utils import ConfigError, check, from_dict
from ..extras import require
from ..layers.basic import HeadwiseLinear
from ..models import XLSTMLM
from . import checkpoint as ckpt_io

#: The layers adapted by default: ``hf.modeling.LORA_TARGET_MODULES`` (see its comment),
#: repeated here so the run config does not import transformers; a test checks that the
#: two agree. xLSTM-7B blocks: q, k, v, out_proj (nn.Linear); paper mLSTM blocks:
#: proj_up, proj_down (nn.Linear) and the head-wise q_proj, k_proj, v_proj.
DEFAULT_TARGET_MODULES = ("q", "k", "v", "out_proj", "proj_up", "proj_down", "q_proj", "k_proj", "v_proj")

#: Layer types that take adapters: peft's own nn.Linear LoRA, and ours for HeadwiseLinear.
ADAPTABLE_TYPES = (nn.Linear, HeadwiseLinear)


@dataclass
class LoraSettings:
    """Low-rank adapters (peft LoRA) instead of full fine-tuning."""

    r: int = 8
    """Rank of each adapter (of each head's adapter on head-wise layers: r * (in + out)
    parameters either way, see ``xlstm_lm.layers.lora``)."""
    alpha: float = 16.0
    """Scale numerator: the adapter output is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = DEFAULT_TARGET_MODULES  # type: ignore[assignment]
    """Names (last path component) of the nn.Linear or head-wise layers that get adapters;
    default DEFAULT_TARGET_MODULES."""

    def __post_init__(self):
        self.target_modules = list(self.target_modules)
        check(self.r >= 1, f"train.lora.r must be >= 1, got {self.r}")
        check(self.alpha > 0, f"train.lora.alpha must be positive, got {self.alpha}")
        check(0 <= self.dropout < 1, f"train.lora.dropout must be in [0, 1), got {self.dropout}")
        check(len(self.target_modules) > 0, "train.lora.target_modules must name at least one layer")


def adaptable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Full name -> layer of every layer of ``model`` that can take an adapter (``ADAPTABLE_TYPES``)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ADAPTABLE_TYPES)}


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Inject adapters into ``model`` in place (and return it); only adapters stay trainable."""
    peft = require("peft", "train.lora")
    # peft is there: the module of our head-wise LoRA layer, which imports it, can load
    from ..layers.lora import register_headwise_lora

    layers = adaptable_layers(model)
    wanted = set(settings.target_modules)
    # Full names of the matching layers: peft matches bare names by suffix and would also
    # take same-named modules of other types.
    targets = [name for name in layers if name.rsplit(".", 1)[-1] in wanted]
    if not targets:
        linear, headwise = ({n.rsplit(".", 1)[-1] for n, m in layers.items() if isinstance(m, kind)}
                            for kind in (nn.Linear, HeadwiseLinear))
        raise ConfigError(
            f"train.lora.target_modules={settings.target_modules} matches no layer of this model that takes "
            f"adapters; choose some of its nn.Linear names {sorted(linear)} or its head-wise (HeadwiseLinear) "
            f"names {sorted(headwise)}"
        )
    config = peft.LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets, bias="none",
    )
    model = peft.inject_adapter_in_model(register_headwise_lora(config), model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def has_lora(model: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer and unwrap it (in place); returns ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in wrapped:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def load_lora_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any], Path]:
    """``(model with adapters, run config, checkpoint folder)`` of a LoRA run dir or checkpoint."""
    ckpt = ckpt_io.resolve_checkpoint(path)
    run_cfg = ckpt_io.load_checkpoint_config(ckpt)
    lora = (run_cfg.get("train") or {}).get("lora")
    if not lora:
        raise ConfigError(f"{ckpt} is not a LoRA checkpoint (its config has no train.lora); export it directly")
    model = apply_lora(XLSTMLM(from_dict(ModelConfig, run_cfg["model"], "model")), from_dict(LoraSettings, lora, "train.lora"))
    ckpt_io.load_checkpoint_weights(model, ckpt)
    return model.eval(), run_cfg, ckpt


def merge_lora_checkpoint(path: str | Path, out_dir: str | Path) -> Path:
    """Write the merged weights of a LoRA checkpoint as a plain checkpoint folder ``out_dir``
    (model.safetensors, config.yaml without train.lora, tokenizer/), which
    ``tools/export_hf.py`` and ``--init-from`` accept."""
    model, run_cfg, ckpt = load_lora_checkpoint(path)
    merge_lora(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / ckpt_io.MODEL_FILE))
    train_cfg = {k: v for k, v in (run_cfg.get("train") or {}).items() if k not in ("lora", "init_from")}
    ckpt_io.dump_config({**run_cfg, "train": train_cfg}, out / ckpt_io.CONFIG_FILE)
    if (ckpt / ckpt_io.TOKENIZER_DIR).is_dir():
        shutil.copytree(ckpt / ckpt_io.TOKENIZER_DIR, out / ckpt_io.TOKENIZER_DIR, dirs_exist_ok=True)
    return out


__all__ = ["ADAPTABLE_TYPES", "DEFAULT_TARGET_MODULES", "LoraSettings", "adaptable_layers", "apply_lora", "has_lora", "load_lora_checkpoint", "merge_lora", "merge_lora_checkpoint"]
