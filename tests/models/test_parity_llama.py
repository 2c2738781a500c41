"""Parity with transformers' ``LlamaForCausalLM``: ``pattern="aaa"`` is a Llama.

The same config on both sides (d_model, heads, key/value heads, SwiGLU width, rope
theta, RMSNorm epsilon, vocabulary, tied or untied head), Llama's weights copied
into ours, every parameter perturbed first (so the norm weights are not all ones).
Logits must agree to 1e-5 relative in fp32, also with grouped-query heads and with a
head dim whose rotary halves are not a power of two, against Llama's SDPA and its
eager attention; token-by-token decoding on our key/value cache and a left-padded
batch (Llama with its attention mask and position ids) agree too.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from xlstm_lm.config import ModelConfig
from xlstm_lm.config_utils import from_dict
from xlstm_lm.models import XLSTMLM

transformers = pytest.importorskip("transformers")

# fp32: identical with Llama's SDPA path (the same ops in the same order), ~7e-7
# relative with its eager attention (matmul + softmax instead of the fused kernel)
RTOL = 1e-5


def llama_pair(
    d_model=64, layers=3, heads=4, kv_heads=None, vocab=101, tie=False, theta=10000.0, eps=1e-6, seed=0, attn="sdpa"
):
    """(ours, Llama) with the same config and weights, both fp32, eval mode; ``attn`` is
    Llama's attention implementation."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = from_dict(
        ModelConfig,
        dict(
            vocab_size=vocab, d_model=d_model, num_blocks=layers, pattern="a" * layers, norm="rmsnorm",
            norm_eps=eps, tie_embeddings=tie,
            attention={"num_heads": heads, "num_kv_heads": kv_heads, "rope_theta": theta, "ffn_round_to": 32},
        ),
        "model",
    )
    hf_cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=d_model, intermediate_size=cfg.attention_ffn_dim, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=cfg.attention_kv_heads, rms_norm_eps=eps,
        rope_parameters={"rope_type": "default", "rope_theta": theta}, tie_word_embeddings=tie,
        max_position_embeddings=256, attention_bias=False, mlp_bias=False, attn_implementation=attn,
    )
    theirs = LlamaForCausalLM(hf_cfg).float().eval()
    assert theirs.config._attn_implementation == attn
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = XLSTMLM(cfg).eval()
    ours.load_state_dict(llama_to_ours(theirs.state_dict(), layers, tie), strict=True)
    return ours, theirs


def llama_to_ours(sd: dict, layers: int, tie: bool) -> dict:
    """transformers' Llama state dict -> ours (one-to-one renames, no reshapes)."""
    out = {"embedding.weight": sd["model.embed_tokens.weight"], "final_norm.weight": sd["model.norm.weight"]}
    out["lm_head.weight"] = sd["model.embed_tokens.weight"] if tie else sd["lm_head.weight"]
    names = {
        "input_layernorm": "norm", "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attention.q", "self_attn.k_proj": "attention.k", "self_attn.v_proj": "attention.v",
        "self_attn.o_proj": "attention.out_proj",
        "mlp.gate_proj": "ffn.gate", "mlp.up_proj": "ffn.up", "mlp.down_proj": "ffn.down",
    }
    for i in range(layers):
        for theirs, ours in names.items():
            out[f"blocks.{i}.{ours}.weight"] = sd[f"model.layers.{i}.{theirs}.weight"]
    return out


CASES = [
    pytest.param(dict(), id="MHA-H4-untied"),
    pytest.param(dict(kv_heads=2, tie=True), id="GQA-H4-KV2-tied"),
    pytest.param(dict(d_model=96, heads=8, kv_heads=1, theta=500000.0, eps=1e-5), id="MQA-H8-KV1-Dh12-theta5e5"),
]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kw", CASES)
def test_logits_equal_llama(kw, attn):
    ours, theirs = llama_pair(**kw, attn=attn)
    ids = torch.randint(0, 101, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = theirs(ids).logits
        out = ours(ids)
        assert_close(out.logits, ref, rtol=RTOL, atol_floor=0, msg="full sequence")
        # decoding one token at a time on our key/value cache
        a = ours(ids[:, :30])
        steps, state = [a.logits], a.state
        for t in range(30, 37):
            step = ours(ids[:, t : t + 1], state)
            steps.append(step.logits)
            state = step.state
        assert_close(torch.cat(steps, 1), ref, rtol=RTOL, atol_floor=0, msg="decode")


def test_left_padded_batch_equals_llama_with_mask_and_position_ids():
    ours, theirs = llama_pair(kv_heads=2)
    g = torch.Generator().manual_seed(2)
    lengths, T = [13, 6], 13
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, T - n :] = torch.randint(1, 101, (n,), generator=g)
        mask[r, T - n :] = 1
    # Llama's own convention for left padding: positions count the real tokens only
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = theirs(ids, attention_mask=mask, position_ids=position_ids).logits
        out = ours(ids, attention_mask=mask).logits
    real = mask.bool()
    assert_close(out[real], ref[real], rtol=RTOL, atol_floor=0)
