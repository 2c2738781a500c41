"""``XLSTMLMForCausalLM``: ``XLSTMLM`` as a transformers ``PreTrainedModel`` + ``GenerationMixin``.

One wrapper serves every backbone (xLSTM[a:b] mixes, the xLSTM-7B layout, the
classic LSTM family, Llama and hybrids with attention blocks). Generation runs the
prompt through the full-sequence path (parallel / chunkwise mLSTM, the sLSTM and
classic loops, causal attention) once, then feeds one token at a time on the carried
state (``XLSTMLMCache``), so memory is constant in the number of generated tokens
for recurrent blocks; attention blocks add one key/value position per token.

Conventions that differ from ``XLSTMLM.forward``, as transformers expects them:

* ``labels`` are shifted inside (``labels = input_ids`` trains next-token prediction);
* ``attention_mask`` may be longer than ``input_ids`` (generate passes the mask of
  all positions so far); its last ``T`` columns belong to the inputs. Padding must
  be on the left: padded positions leave every recurrent state untouched, and
  attention blocks neither attend to them nor count them in rotary positions.

The cache goes in and out under the name the installed transformers uses
(``cache`` from 5.24 on, ``past_key_values`` before; ``forward`` accepts every name,
see ``compat.py``). ``generate`` prepares the inputs with transformers' own
``prepare_inputs_for_generation``, so every argument it hands the model
(``output_hidden_states``, ``logits_to_keep``, ``inputs_embeds`` on the first step,
a cache to continue from) arrives as it would for a model inside transformers.

Activation checkpointing follows transformers' convention: each block of the wrapped
``XLSTMLM`` is turned into a ``GradientCheckpointingLayer`` of the same name and
parameters when the wrapper is built, so transformers' switch
(``activation_checkpointing_enable`` / ``gradient_checkpointing_enable``) reaches
them; the model code itself knows nothing of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from ..layers.basic import soft_cap
from ..models.blocks import AttentionBlock, ClassicBlock, MLSTM7BBlock, MLSTMBlock, SLSTMBlock
from ..models.lm import XLSTMLM
from .cache import XLSTMLMCache
from .compat import causal_lm_output, pick_cache
from .configuration import XLSTMLMConfig


#: Layer names for peft LoRA: xLSTM-7B and attention blocks: q, k, v (cell / attention
#: inputs), out_proj (output projection), all nn.Linear; paper mLSTM blocks: proj_up,
#: proj_down (nn.Linear) and the head-wise q_proj, k_proj, v_proj. Head-wise layers are
#: block-diagonal HeadwiseLinear, which peft adapts only through our per-head LoRA layer:
#: build the config as
#: register_headwise_lora(LoraConfig(target_modules=list(LORA_TARGET_MODULES), ...))
#: (xlstm_lm.layers.lora), or peft stops with "Target module HeadwiseLinear(...) is not
#: supported". Classic cells are not targeted. Add "ogate", "igate", "fgate" (nn.Linear in
#: mLSTM blocks, head-wise in sLSTM blocks), the sLSTM's "zgate" or the FFN's "gate", "up",
#: "down" for more capacity.
LORA_TARGET_MODULES = ("q", "k", "v", "out_proj", "proj_up", "proj_down", "q_proj", "k_proj", "v_proj")


class MLSTMBlockLayer(GradientCheckpointingLayer, MLSTMBlock):
    """``MLSTMBlock`` that transformers' activation-checkpointing switch reaches."""


class SLSTMBlockLayer(GradientCheckpointingLayer, SLSTMBlock):
    """``SLSTMBlock`` that transformers' activation-checkpointing switch reaches."""


class MLSTM7BBlockLayer(GradientCheckpointingLayer, MLSTM7BBlock):
    """``MLSTM7BBlock`` that transformers' activation-checkpointing switch reaches."""


class AttentionBlockLayer(GradientCheckpointingLayer, AttentionBlock):
    """``AttentionBlock`` that transformers' activation-checkpointing switch reaches."""


class ClassicBlockLayer(GradientCheckpointingLayer, ClassicBlock):
    """``ClassicBlock`` that transformers' activation-checkpointing switch reaches."""


#: block class of ``XLSTMLM`` -> the same block as a ``GradientCheckpointingLayer``
CHECKPOINTING_LAYERS = {
    MLSTMBlock: MLSTMBlockLayer,
    SLSTMBlock: SLSTMBlockLayer,
    MLSTM7BBlock: MLSTM7BBlockLayer,
    AttentionBlock: AttentionBlockLayer,
    ClassicBlock: ClassicBlockLayer,
}


class XLSTMLMPreTrainedModel(PreTrainedModel):
    config_class = XLSTMLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # The cache holds recurrent states: it cannot be cropped (no assisted decoding).
    _is_stateful = True
    _no_split_modules = [cls.__name__ for cls in CHECKPOINTING_LAYERS.values()]
    # Only used when config.tie_word_embeddings (derived from model.tie_embeddings).
    _tied_weights_keys = {"model.lm_head.weight": "model.embedding.weight"}

    def _init_weights(self, module: nn.Module) -> None:
        # XLSTMLM initialises itself in its constructor (the papers' schemes, per block
        # kind and depth); transformers' generic re-initialisation would overwrite that.
        pass

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, but weights that do not fit the
        architecture are an error, not a warning with randomly initialised leftovers.

        As in transformers, ``output_loading_info=True`` returns ``(model, info)`` and
        reports missing / unexpected / mismatched keys in ``info`` instead of raising;
        so does ``ignore_mismatched_sizes=True`` (transformers' lenient loading)."""
        want_info = kwargs.pop("output_loading_info", False)
        lenient = want_info or kwargs.get("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = {k: sorted(map(str, info.get(k) or []))[:6] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if not lenient and any(problems.values()):
            found = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in problems.items() if v)
            raise ValueError(
                f"the weights in {args[0] if args else kwargs.get('pretrained_model_name_or_path')} do not fit the "
                f"architecture in its config.json ({found}); it was saved from a different model "
                "(pass output_loading_info=True to load anyway and get the list of keys)"
            )
        return (model, info) if want_info else model

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The model builds its own XLSTMLMCache; a key/value DynamicCache does not apply.
        return False


class XLSTMLMForCausalLM(XLSTMLMPreTrainedModel, GenerationMixin):
    """Causal LM over ``XLSTMLM`` (``self.model``); see the module docstring."""

    def __init__(self, config: XLSTMLMConfig):
        super().__init__(config)
        self.model = XLSTMLM(config.model_config)
        for block in self.model.blocks:
            # same parameters and forward; only transformers' checkpointing switch is added
            block.__class__ = CHECKPOINTING_LAYERS[type(block)]
        self.post_init()

    # --- embeddings (transformers / peft use these) -------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embedding = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.lm_head = value

    def resize_token_embeddings(self, *args, **kwargs) -> nn.Embedding:
        """transformers' resize (embedding, head, ``config.vocab_size``), then the wrapped
        ``XLSTMLM``'s own config follows, so its token-id check accepts the new ids."""
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        self.model.config = self.config.model_config
        return embeddings

    def num_params(self, exclude_embedding: bool = False) -> int:
        return self.model.num_params(exclude_embedding)

    # --- forward -------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: XLSTMLMCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: XLSTMLMCache | None = None,
        **kwargs,
    ):
        """``input_ids (B, T)`` or ``inputs_embeds (B, T, D)``; continues from the cache
        if one is given (as ``cache``, ``past_key_values`` or ``cache_params``). Returns
        ``CausalLMOutputWithPast`` with ``logits (B, T', V)`` (``T' = logits_to_keep``
        last positions, all if 0), the shifted-label loss, the hidden states (embedding
        output, then each block's, the last one after the final norm) when asked, and
        the updated cache when ``use_cache``, under the installed transformers' name
        (``compat.CACHE_NAME``). ``attentions`` is always None: recurrent blocks have no
        attention weights, and attention blocks use fused SDPA, which does not form them."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        cache = pick_cache(cache=cache, past_key_values=past_key_values, cache_params=kwargs.pop("cache_params", None))
        if cache is not None and not isinstance(cache, XLSTMLMCache):
            raise TypeError(
                f"the cache must be an XLSTMLMCache (the recurrent state), got {type(cache).__name__}; "
                "pass the one a previous forward returned, or None"
            )
        lm = self.model
        state = cache.states if cache is not None else None
        if input_ids is not None:
            lm._check_inputs(input_ids, state, None)
            x = lm.emb_dropout(lm.embedding(input_ids))
        else:
            if state is not None and len(state) != len(lm.blocks):
                raise ValueError(f"cache has {len(state)} block states but the model has {len(lm.blocks)} blocks")
            x = lm.emb_dropout(inputs_embeds)
        B, T = x.shape[:2]
        mask = self._token_mask(attention_mask, B, T)
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        output_hidden_states = bool(output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states)

        # Mirrors XLSTMLM.forward (tests/hf prove equal logits and states), with
        # inputs_embeds and hidden-state outputs added; each block checkpoints itself
        # when transformers' switch is on (GradientCheckpointingLayer).
        hidden_states = [] if output_hidden_states else None
        new_state = []
        for b, block in enumerate(lm.blocks):
            if hidden_states is not None:
                hidden_states.append(x)
            x, s = block(x, None if state is None else state[b], mask)
            new_state.append(s)
        x = lm.final_norm(x)
        if hidden_states is not None:
            hidden_states.append(x)

        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = soft_cap(lm.lm_head(x[:, keep]), lm.config.logit_soft_cap)

        loss = None
        if labels is not None:
            if logits.shape[1] != T:
                raise ValueError("labels need the logits of every position; do not combine them with logits_to_keep")
            loss = self._shifted_loss(logits, labels, kwargs.get("num_items_in_batch"))

        out_cache = None
        if use_cache:
            out_cache = cache if cache is not None else XLSTMLMCache()
            out_cache.update(new_state, T)
        output = causal_lm_output(
            cache=out_cache,
            loss=loss,
            logits=logits,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _token_mask(attention_mask: torch.Tensor | None, B: int, T: int) -> torch.Tensor | None:
        """The (B, T) bool mask of real tokens, or None when every position is real."""
        if attention_mask is None:
            return None
        if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] < T:
            raise ValueError(
                f"attention_mask must be (batch, >= seq_len) = ({B}, >= {T}) with 1 for tokens and 0 for left "
                f"padding, got shape {tuple(attention_mask.shape)}"
            )
        # generate passes the mask of every position so far; the last T are the inputs
        mask = attention_mask[:, attention_mask.shape[1] - T :].bool()
        return None if bool(mask.all()) else mask

    @staticmethod
    def _shifted_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """Next-token cross-entropy (labels[:, t+1] is the target of position t), in at least fp32."""
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids {tuple(logits.shape[:2])}")
        flat = logits[:, :-1].reshape(-1, logits.shape[-1])
        # bf16/fp16 logits lose the small probabilities
        flat = flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat
        target = labels[:, 1:].reshape(-1).to(flat.device)
        if num_items_in_batch is None:
            return F.cross_entropy(flat, target, ignore_index=-100)
        # gradient accumulation (Trainer): sum here, normalised by the tokens of all micro-batches
        total = F.cross_entropy(flat, target, ignore_index=-100, reduction="sum")
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    # --- generation ------------------------------------------------------------------
    # transformers' own prepare_inputs_for_generation is used as is: it slices the new
    # positions by the cache's get_seq_length() (prefill: the whole prompt; then one
    # token per step; continuing from a returned cache: what it has not seen), takes
    # inputs_embeds on the first step only and forwards every other argument.

    def _reorder_cache(self, cache: XLSTMLMCache, beam_idx: torch.LongTensor) -> XLSTMLMCache:
        cache.reorder_cache(beam_idx)
        return cache


__all__ = ["CHECKPOINTING_LAYERS", "LORA_TARGET_MODULES", "XLSTMLMForCausalLM", "XLSTMLMPreTrainedModel"]
