"""``XLSTMLMForCausalLM``: ``XLSTMLM`` as a transformers ``PreTrainedModel`` + ``GenerationMixin``.

One wrapper serves every backbone (xLSTM[a:b] mixes, the xLSTM-7B layout, the
classic LSTM family). Generation runs the prompt through the full-sequence path
(parallel / chunkwise mLSTM, the sLSTM and classic loops) once, then feeds one
token at a time on the carried state (``XLSTMLMCache``), so memory is constant in
the number of generated tokens.

Conventions that differ from ``XLSTMLM.forward``, as transformers expects them:

* ``labels`` are shifted inside (``labels = input_ids`` trains next-token prediction);
* ``attention_mask`` may be longer than ``input_ids`` (generate passes the mask of
  all positions so far); its last ``T`` columns belong to the inputs. Padding must
  be on the left: padded positions leave every recurrent state untouched.

Activation checkpointing is applied here, per block, when transformers enables it
(``gradient_checkpointing_enable``); the model code itself knows nothing of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..layers.basic import soft_cap
from ..models.lm import XLSTMLM
from .cache import XLSTMLMCache
from .configuration import XLSTMLMConfig


#: nn.Linear names for peft LoRA (``LoraConfig(target_modules=LORA_TARGET_MODULES)``):
#: xLSTM-7B blocks: q, k, v (cell inputs), out_proj (output projection); paper mLSTM
#: blocks: proj_up, proj_down. Their head-wise q/k/v and the sLSTM gates are
#: block-diagonal ``HeadwiseLinear`` layers, which peft cannot wrap; classic cells
#: are not targeted. Add "ogate", "igate", "fgate" or the FFN's "gate", "up", "down"
#: for more capacity.
LORA_TARGET_MODULES = ("q", "k", "v", "out_proj", "proj_up", "proj_down")


class XLSTMLMPreTrainedModel(PreTrainedModel):
    config_class = XLSTMLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # The cache is a recurrent state: it cannot be cropped (no assisted decoding).
    _is_stateful = True
    _no_split_modules = ["MLSTMBlock", "SLSTMBlock", "MLSTM7BBlock", "ClassicBlock"]
    # Only used when config.tie_word_embeddings (derived from model.tie_embeddings).
    _tied_weights_keys = {"model.lm_head.weight": "model.embedding.weight"}

    def _init_weights(self, module: nn.Module) -> None:
        # XLSTMLM initialises itself in its constructor (the papers' schemes, per block
        # kind and depth); transformers' generic re-initialisation would overwrite that.
        pass

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, but weights that do not fit the
        architecture are an error, not a warning with randomly initialised leftovers
        (pass ``ignore_mismatched_sizes=True`` to get transformers' lenient loading)."""
        want_info = kwargs.pop("output_loading_info", False)
        lenient = kwargs.get("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = {k: sorted(map(str, info.get(k) or []))[:6] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if not lenient and any(problems.values()):
            found = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in problems.items() if v)
            raise ValueError(
                f"the weights in {args[0] if args else kwargs.get('pretrained_model_name_or_path')} do not fit the "
                f"architecture in its config.json ({found}); it was saved from a different model"
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
        self.gradient_checkpointing = False
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

    def num_params(self, exclude_embedding: bool = False) -> int:
        return self.model.num_params(exclude_embedding)

    # --- forward -------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: XLSTMLMCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """``input_ids (B, T)`` or ``inputs_embeds (B, T, D)``; continues from
        ``past_key_values`` if given. Returns ``CausalLMOutputWithPast`` with
        ``logits (B, T', V)`` (``T' = logits_to_keep`` last positions, all if 0),
        the shifted-label loss, and the updated cache when ``use_cache``."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if past_key_values is not None and not isinstance(past_key_values, XLSTMLMCache):
            raise TypeError(
                f"past_key_values must be an XLSTMLMCache (the recurrent state), got {type(past_key_values).__name__}; "
                "pass the one a previous forward returned, or None"
            )
        lm = self.model
        cache = past_key_values
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
        # inputs_embeds, hidden-state outputs and per-block checkpointing added.
        hidden_states = [] if output_hidden_states else None
        new_state = []
        for b, block in enumerate(lm.blocks):
            if hidden_states is not None:
                hidden_states.append(x)
            block_state = None if state is None else state[b]
            if self.gradient_checkpointing and self.training:
                x, s = self._gradient_checkpointing_func(block.__call__, x, block_state, mask)
            else:
                x, s = block(x, block_state, mask)
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
        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=out_cache,
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
    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: XLSTMLMCache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        next_sequence_length: int | None = None,
        **kwargs,
    ) -> dict:
        """Prefill: the whole prompt (full-sequence path). Then: only the new token(s)
        on the carried state. Without a cache, every step recomputes the whole
        sequence from the empty state. ``inputs_embeds`` are used for the prefill only."""
        if use_cache is None:
            use_cache = self.config.use_cache
        inputs: dict = {"use_cache": use_cache, "attention_mask": attention_mask}
        seen = past_key_values.get_seq_length() if past_key_values is not None else 0
        if use_cache and next_sequence_length is not None:
            # transformers >= 5 says how many trailing positions are new
            inputs["input_ids"] = input_ids[:, input_ids.shape[1] - next_sequence_length :]
        elif use_cache and seen > 0:
            inputs["input_ids"] = input_ids[:, seen:]
        elif use_cache and inputs_embeds is not None:
            inputs["inputs_embeds"] = inputs_embeds
        else:
            inputs["input_ids"] = input_ids
        if use_cache:
            inputs["past_key_values"] = past_key_values
        if "logits_to_keep" in kwargs:
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs

    def _reorder_cache(self, past_key_values: XLSTMLMCache, beam_idx: torch.LongTensor) -> XLSTMLMCache:
        past_key_values.reorder_cache(beam_idx)
        return past_key_values


__all__ = ["LORA_TARGET_MODULES", "XLSTMLMForCausalLM", "XLSTMLMPreTrainedModel"]
