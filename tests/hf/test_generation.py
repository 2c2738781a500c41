"""Generation through transformers' ``generate`` on the recurrent cache.

Invariances: cached generation == full recomputation without a cache (greedy and
beam search, token for token, every block kind); a left-padded batch continues
like each prompt alone; prefill runs the full-sequence path once, then T=1 steps;
the cache does not grow for recurrent blocks, and grows by one key/value position
per token for attention blocks. Plus sampling, repetition penalty, stopping criteria,
TextStreamer and pipeline("text-generation").
"""

from __future__ import annotations

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer, pipeline

from tests.hf import ALL_KINDS, tiny_hf_model
from xlstm_lm.hf.cache import XLSTMLMCache
from xlstm_lm.hf.compat import output_cache
from xlstm_lm.hf.export import byte_tokenizer_fast

KINDS = list(ALL_KINDS)


@pytest.mark.parametrize("kind", KINDS, ids=[f"block-{k}" for k in KINDS])
def test_cached_generation_equals_recomputation_and_padding(kind):
    model = tiny_hf_model(kind, pad_token_id=0)
    gen = torch.Generator().manual_seed(1)
    # prompt of 11 > chunk size 8: the prefill runs the chunkwise form
    ids = torch.randint(1, 37, (2, 11), generator=gen)
    greedy = dict(max_new_tokens=8, do_sample=False)
    cached = model.generate(ids, **greedy)
    assert torch.equal(cached, model.generate(ids, use_cache=False, **greedy))
    # the same tokens as argmax over full forwards of XLSTMLM itself
    seq = ids
    for _ in range(8):
        seq = torch.cat([seq, model.model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, seq)

    beams = dict(max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False)
    assert torch.equal(model.generate(ids, **beams), model.generate(ids, use_cache=False, **beams))

    # left padding: each row continues exactly as its prompt alone
    p1, p2 = torch.randint(1, 37, (1, 5), generator=gen), torch.randint(1, 37, (1, 9), generator=gen)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), p1], 1), p2])
    mask = torch.tensor([[0] * 4 + [1] * 5, [1] * 9])
    out = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(out[0, 9:], model.generate(p1, max_new_tokens=8, do_sample=False)[0, 5:])
    assert torch.equal(out[1, 9:], model.generate(p2, max_new_tokens=8, do_sample=False)[0, 9:])
    # and left-padded beam search too
    out_b = model.generate(batch, attention_mask=mask, max_new_tokens=4, num_beams=2, do_sample=False)
    assert torch.equal(out_b[0, 9:], model.generate(p1, max_new_tokens=4, num_beams=2, do_sample=False)[0, 5:])


def test_prefill_is_one_full_sequence_pass_then_single_token_steps_with_constant_memory():
    model = tiny_hf_model("msx")
    lengths = []
    hook = model.model.blocks[0].register_forward_pre_hook(lambda mod, args: lengths.append(args[0].shape[1]))
    ids = torch.randint(0, 37, (2, 13))
    out = model.generate(ids, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    hook.remove()
    assert lengths == [13] + [1] * 5
    cache = output_cache(out)
    assert isinstance(cache, XLSTMLMCache) and cache.get_seq_length() == 13 + 5
    short = cache.memory_bytes()
    long = output_cache(model.generate(ids, max_new_tokens=40, do_sample=False, return_dict_in_generate=True))
    assert long.memory_bytes() == short > 0


def test_attention_cache_grows_by_one_key_value_position_per_token():
    """Recurrent states stay constant; an attention block's keys and values (and its
    visibility flags) grow by one position per token fed."""
    model = tiny_hf_model("ma")
    ids = torch.randint(0, 37, (2, 13))
    caches = [
        output_cache(model.generate(ids, max_new_tokens=n, do_sample=False, return_dict_in_generate=True))
        for n in (6, 40)
    ]
    k, v, visible, next_pos = caches[1].states[1]
    assert k.shape == v.shape == (2, 2, 13 + 39, 8) and visible.shape == (2, 52) and visible.all()
    assert next_pos.tolist() == [52, 52]
    # per position and row: keys and values of 2 heads x 8 dims in float64, one bool
    per_position = 2 * (2 * 2 * 8 * 8 + 1)
    assert caches[1].memory_bytes() - caches[0].memory_bytes() == 34 * per_position


def test_sampling_repetition_penalty_and_stopping_criteria_match_recomputation():
    model = tiny_hf_model("ms")
    ids = torch.randint(1, 37, (3, 10))
    for opts in (
        dict(do_sample=True, temperature=0.7, top_k=10, top_p=0.9),
        dict(do_sample=False, repetition_penalty=1.5),
    ):
        outs = []
        for use_cache in (True, False):
            torch.manual_seed(3)
            outs.append(model.generate(ids, max_new_tokens=15, use_cache=use_cache, **opts))
        assert torch.equal(outs[0], outs[1]), opts

    class StopAfter(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 14, dtype=torch.bool)

    out = model.generate(ids, max_new_tokens=50, do_sample=False, stopping_criteria=StoppingCriteriaList([StopAfter()]))
    assert out.shape[1] == 14
    # eos: a row that emits it is padded afterwards; generation stops when all have
    first = model.generate(ids[:1], max_new_tokens=1, do_sample=False)[0, -1].item()
    out = model.generate(ids[:1], max_new_tokens=10, do_sample=False, eos_token_id=first, pad_token_id=0)
    assert out.shape[1] == 11 and out[0, -1].item() == first


def test_text_streamer_and_text_generation_pipeline(capsys):
    tok = byte_tokenizer_fast()
    model = tiny_hf_model("mx", vocab_size=256, eos_token_id=0, pad_token_id=0)
    prompt = "def f(x):"
    ids = tok(prompt, return_tensors="pt")
    # ASCII-only continuations, so every prefix decodes to a prefix of the final text
    ascii_only = dict(suppress_tokens=list(range(128, 256)) + [0])
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, streamer=TextStreamer(tok), **ascii_only)
    streamed = capsys.readouterr().out
    assert streamed.rstrip("\n") == tok.decode(out[0])

    generator = pipeline("text-generation", model=model, tokenizer=tok, device="cpu")
    text = generator(prompt, max_new_tokens=8, do_sample=False, **ascii_only)[0]["generated_text"]
    assert text == tok.decode(out[0])
    # batched prompts through the pipeline (left padding)
    texts = generator([prompt, "x = 1"], max_new_tokens=4, do_sample=False, batch_size=2, **ascii_only)
    alone = generator("x = 1", max_new_tokens=4, do_sample=False, **ascii_only)[0]["generated_text"]
    assert texts[1][0]["generated_text"] == alone
