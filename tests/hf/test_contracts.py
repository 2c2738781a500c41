"""The contracts transformers' own model and generation test suites check, for our model.

Each test is one contract a user relies on, for every block kind and for a model
loaded from an exported self-contained folder (remote code, ``trust_remote_code``):

1. the cache goes in under every name (``cache``, ``past_key_values``,
   ``cache_params``) and comes out under the installed release's; ``generate``
   continues from a returned cache exactly as one long generation;
2. every extra ``generate`` argument reaches the model: per-step hidden states (and
   logits) in the generation output, greedy, sampling and beam search alike;
3. ``resize_token_embeddings`` leaves embedding, head, the HF config and the inner
   model config consistent, and the new ids work;
4. activation checkpointing through transformers' switch reaches every block (each a
   ``GradientCheckpointingLayer``), recomputes it, gives the same gradients, and
   switches off again;
5. ``from_pretrained(..., output_loading_info=True)`` reports missing / unexpected
   keys instead of raising;
6. the cache has the attributes transformers reads on a user-passed cache, and
   generation starts from ``inputs_embeds`` and continues from them with a cache.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import assert_close
from tests.hf import ALL_KINDS, tiny_hf_model, tiny_model_dict
from xlstm_lm.hf.compat import CACHE_ALIASES, CACHE_NAME, activation_checkpointing, is_activation_checkpointing, output_cache
from xlstm_lm.hf.export import export_model
from xlstm_lm.hf.modeling import XLSTMLMForCausalLM

#: every block kind alone, plus a model loaded from an exported folder with all of them
SOURCES = [pytest.param(("package", k), id=f"block-{k}") for k in ALL_KINDS] + [
    pytest.param(("export", ALL_KINDS), id="export-all-kinds")
]
V = 37


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An exported folder of a model with every block kind, loaded as remote code (the
    folder's own classes: in this process the Auto classes would pick the installed
    package's, which the other tests cover)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    out = tmp_path_factory.mktemp("export") / "tiny_all_kinds"
    export_model(tiny_hf_model(ALL_KINDS, pad_token_id=0), None, out)
    remote = get_class_from_dynamic_module("modeling_xlstm_lm.XLSTMLMForCausalLM", out)
    model = remote.from_pretrained(out, dtype=torch.float64)
    # the folder's own modeling code, not the installed package's
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    return model.eval()


@pytest.fixture
def model(request, exported):
    source, pattern = request.param
    return exported if source == "export" else tiny_hf_model(pattern, pad_token_id=0)


def _prompt(batch=2, length=11, seed=1):
    return torch.randint(1, V, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model", SOURCES, indirect=True)
def test_1_cache_under_every_name_and_generate_continues_from_a_returned_cache(model):
    ids = _prompt()
    full = model(ids)
    for name in CACHE_ALIASES:
        first = model(ids[:, :7], use_cache=True)
        assert CACHE_NAME in first.keys() and type(output_cache(first)).__name__ == "XLSTMLMCache"
        second = model(ids[:, 7:], use_cache=True, **{name: output_cache(first)})
        assert_close(second.logits, full.logits[:, 7:], rtol=1e-10, atol_floor=1e-12, msg=name)
        assert output_cache(second).get_seq_length() == 11
    other = output_cache(model(ids[:, :7], use_cache=True))
    with pytest.raises(ValueError, match="passed twice"):
        model(ids[:, 7:], cache=other, past_key_values=output_cache(model(ids[:, :7], use_cache=True)))

    # generate 4, then continue from the returned cache for 4 more == generate 8 at once
    greedy = dict(do_sample=False, return_dict_in_generate=True)
    once = model.generate(ids, max_new_tokens=8, **greedy).sequences
    part = model.generate(ids, max_new_tokens=4, **greedy)
    # the mask is passed: without one transformers takes every pad id (0 here) in the
    # ids for padding, and the generated tokens may well be 0
    seen = torch.ones_like(part.sequences)
    more = model.generate(part.sequences, attention_mask=seen, max_new_tokens=4, **greedy, **{CACHE_NAME: output_cache(part)})
    assert torch.equal(more.sequences, once)

    # the same with a left-padded batch (the cache counts the padding positions too)
    p1, p2 = _prompt(1, 5, seed=2), _prompt(1, 9, seed=3)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), p1], 1), p2])
    mask = torch.tensor([[0] * 4 + [1] * 5, [1] * 9])
    once = model.generate(batch, attention_mask=mask, max_new_tokens=6, **greedy).sequences
    part = model.generate(batch, attention_mask=mask, max_new_tokens=3, **greedy)
    grown = torch.cat([mask, torch.ones(2, 3, dtype=torch.long)], 1)
    more = model.generate(part.sequences, attention_mask=grown, max_new_tokens=3, **greedy, **{CACHE_NAME: output_cache(part)})
    assert torch.equal(more.sequences, once)
    assert torch.equal(once[0, 9:], model.generate(p1, max_new_tokens=6, do_sample=False)[0, 5:])


@pytest.mark.parametrize("model", SOURCES, indirect=True)
def test_2_generate_forwards_its_arguments_hidden_states_and_logits_per_step(model):
    ids = _prompt(length=9)
    n_states = len(model.model.blocks) + 1
    out = model.generate(
        ids, max_new_tokens=3, do_sample=False, output_hidden_states=True, output_logits=True, return_dict_in_generate=True
    )
    assert len(out.hidden_states) == 3 and len(out.logits) == 3
    # step 0 holds the prompt positions, later steps one position each; all equal a full forward
    ref = model(out.sequences[:, :-1], output_hidden_states=True)
    assert len(ref.hidden_states) == n_states
    for step, states in enumerate(out.hidden_states):
        assert len(states) == n_states
        positions = slice(0, 9) if step == 0 else slice(8 + step, 9 + step)
        for layer, h in enumerate(states):
            assert h is not None and h.shape == (2, positions.stop - positions.start, 32)
            assert_close(h, ref.hidden_states[layer][:, positions], rtol=1e-10, atol_floor=1e-12, msg=f"step {step} layer {layer}")
        # generate hands the logits back in float32 (the model runs in float64 here)
        assert_close(out.logits[step], ref.logits[:, 8 + step], rtol=1e-6, atol_floor=1e-6, msg=f"logits {step}")

    for opts in (dict(do_sample=True, top_k=5), dict(num_beams=2, do_sample=False)):
        out = model.generate(ids, max_new_tokens=3, output_hidden_states=True, return_dict_in_generate=True, **opts)
        rows = 2 * opts.get("num_beams", 1)
        assert len(out.hidden_states) == 3, opts
        assert all(h is not None and h.shape[0] == rows and h.shape[-1] == 32 for step in out.hidden_states for h in step), opts


def test_3_resize_token_embeddings_keeps_every_part_consistent(tmp_path):
    for tied in (False, True):
        model = tiny_hf_model(ALL_KINDS, tie_embeddings=tied)
        ids = _prompt()
        before = model(ids).logits
        emb = model.resize_token_embeddings(45)
        assert emb.weight.shape == (45, 32) and model.get_output_embeddings().weight.shape == (45, 32)
        assert model.config.vocab_size == model.model.config.vocab_size == model.config.model["vocab_size"] == 45
        assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
        # the new ids are accepted; the old ones give the old logits over the old vocabulary
        after = model(torch.cat([ids, torch.tensor([[44], [40]])], 1)).logits
        assert after.shape == (2, 12, 45)
        assert_close(after[:, :11, :V], before, rtol=1e-12, atol_floor=1e-14)
        assert model.generate(torch.tensor([[44, 3]]), max_new_tokens=2, do_sample=False).shape == (1, 4)
        # the resized model saves and loads as itself
        model.save_pretrained(tmp_path / f"tied{tied}")
        loaded = XLSTMLMForCausalLM.from_pretrained(tmp_path / f"tied{tied}", dtype=torch.float64)
        assert loaded.model.config.vocab_size == 45
        assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol_floor=0)
        # pad_to_multiple_of rounds the size up, shrinking works too
        assert model.resize_token_embeddings(50, pad_to_multiple_of=16).weight.shape[0] == 64
        assert model.model.config.vocab_size == 64
        model.resize_token_embeddings(V)
        assert model.model.config.vocab_size == V and model(ids).logits.shape[-1] == V


@pytest.mark.parametrize("model", SOURCES, indirect=True)
def test_4_activation_checkpointing_through_transformers_switch(model):
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks = list(model.model.blocks)
    assert all(isinstance(b, GradientCheckpointingLayer) for b in blocks)
    ids = _prompt(length=13)
    model.train()
    try:
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        for reentrant in (False, True):
            activation_checkpointing(model, True, use_reentrant=reentrant)
            assert is_activation_checkpointing(model) and all(b.gradient_checkpointing for b in blocks)
            calls = []
            for b in blocks:
                inner = b._gradient_checkpointing_func
                b._gradient_checkpointing_func = lambda fn, *a, _inner=inner, **k: calls.append(fn) or _inner(fn, *a, **k)
            model.zero_grad()
            model(ids, labels=ids).loss.backward()
            assert len(calls) == len(blocks), reentrant
            for n, g in plain.items():
                assert_close(dict(model.named_parameters())[n].grad, g, rtol=1e-10, atol_floor=1e-14, msg=f"{n} reentrant={reentrant}")
        activation_checkpointing(model, False)
        assert not is_activation_checkpointing(model) and not any(b.gradient_checkpointing for b in blocks)
    finally:
        activation_checkpointing(model, False)
        model.zero_grad(set_to_none=True)
        model.eval()


def test_5_output_loading_info_reports_keys_instead_of_raising(tmp_path):
    from transformers import AutoModelForCausalLM

    tiny_hf_model("ml", dtype=torch.float32).save_pretrained(tmp_path)
    model, info = XLSTMLMForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    # a config with one more block: its weights are missing from the file
    data = json.loads((tmp_path / "config.json").read_text())
    data["model"] = tiny_model_dict("mlm")
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="do not fit the architecture.*output_loading_info"):
        XLSTMLMForCausalLM.from_pretrained(tmp_path)
    for loader in (XLSTMLMForCausalLM, AutoModelForCausalLM):
        model, info = loader.from_pretrained(tmp_path, output_loading_info=True)
        assert isinstance(model, XLSTMLMForCausalLM)
        assert any(k.startswith("model.blocks.2.") for k in info["missing_keys"]), info
    # one block fewer: the file holds unexpected keys
    data["model"] = tiny_model_dict("m")
    (tmp_path / "config.json").write_text(json.dumps(data))
    model, info = XLSTMLMForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert any(k.startswith("model.blocks.1.") for k in info["unexpected_keys"]), info


@pytest.mark.parametrize("model", SOURCES, indirect=True)
def test_6_cache_attributes_and_generation_from_inputs_embeds(model):
    ids = _prompt(length=10)
    cache = output_cache(model(ids, use_cache=True))
    n = len(model.model.blocks)
    assert cache.is_linear == [False] * n and cache.is_sliding == [False] * n
    assert cache.get_seq_length() == 10 and not cache.is_compileable and not cache.is_croppable

    embeds = model.get_input_embeddings()(ids)
    greedy = dict(do_sample=False, return_dict_in_generate=True)
    from_ids = model.generate(ids, max_new_tokens=5, do_sample=False)
    # from inputs_embeds only the new tokens come back
    from_embeds = model.generate(inputs_embeds=embeds, max_new_tokens=5, **greedy)
    assert torch.equal(from_embeds.sequences, from_ids[:, 10:])
    # continue from the embeddings of everything so far plus the returned cache
    part = model.generate(inputs_embeds=embeds, max_new_tokens=3, **greedy)
    grown = torch.cat([embeds, model.get_input_embeddings()(part.sequences)], 1)
    more = model.generate(inputs_embeds=grown, max_new_tokens=2, **greedy, **{CACHE_NAME: output_cache(part)})
    assert torch.equal(more.sequences, from_ids[:, 13:])
