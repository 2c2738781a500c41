"""Whole-model invariances for every block kind, configs, and input errors."""

from __future__ import annotations

import glob
import re

import pytest
import torch

from tests.helpers import assert_close
from xlstm_lm.config import BLOCK_LETTERS, ModelConfig
from xlstm_lm.config_utils import ConfigError, apply_overrides, from_dict, load_yaml
from xlstm_lm.models import XLSTMLM

# attention: four query heads on two key/value heads (grouped-query) of dim 8
SMALL = dict(
    vocab_size=37, d_model=32, mlstm={"num_heads": 2, "chunk_size": 8}, slstm={"num_heads": 2},
    attention={"num_heads": 4, "num_kv_heads": 2},
)
PATTERNS = ["m", "s", "x", "a", "e", "h", "l", "p", "g", "c", "msxm", "mmam"]


def tiny_model(pattern: str, dtype=torch.float64, **kw) -> XLSTMLM:
    torch.manual_seed(0)
    data = {**SMALL, "num_blocks": len(pattern), "pattern": pattern, "mlstm7b": {"num_heads": 2, "chunk_size": 8}}
    data.update(kw)
    model = XLSTMLM(from_dict(ModelConfig, data)).to(dtype)
    # Perturb every parameter so zero-initialised paths (sLSTM recurrent weights,
    # gate weights) take part in the comparison.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("pattern", PATTERNS, ids=[f"pattern-{p}" for p in PATTERNS])
def test_full_sequence_equals_token_by_token(pattern):
    model = tiny_model(pattern)
    ids = torch.randint(0, 37, (2, 19))
    full = model(ids).logits
    state, steps = None, []
    for t in range(ids.shape[1]):
        out = model(ids[:, t : t + 1], state)
        state = out.state
        steps.append(out.logits)
    assert_close(torch.cat(steps, dim=1), full, rtol=1e-10, atol_floor=1e-12, msg=pattern)


@pytest.mark.parametrize("pattern", PATTERNS, ids=[f"pattern-{p}" for p in PATTERNS])
def test_two_halves_with_state_equal_one_run(pattern):
    model = tiny_model(pattern)
    ids = torch.randint(0, 37, (3, 30))
    full = model(ids)
    a = model(ids[:, :13])
    b = model(ids[:, 13:], a.state)
    assert_close(torch.cat([a.logits, b.logits], 1), full.logits, rtol=1e-10, atol_floor=1e-12)
    for s_full, s_b in zip(full.state, b.state):
        for x, y in zip(s_full, s_b):
            assert_close(y, x, rtol=1e-10, atol_floor=1e-12)


@pytest.mark.parametrize("kind", ["mlstm", "mlstm7b"])
def test_mlstm_backends_agree_in_model_with_gradients(kind):
    ids = torch.randint(0, 37, (2, 21))
    results = {}
    for backend in ("parallel", "chunkwise", "recurrent"):
        sub = {"mlstm": {"num_heads": 2, "chunk_size": 8, "backend": backend},
               "mlstm7b": {"num_heads": 2, "chunk_size": 8, "backend": backend}}
        model = tiny_model("m" if kind == "mlstm" else "x", **sub)
        out = model(ids, labels=ids)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[backend] = (out.logits.detach(), grads)
    ref_logits, ref_grads = results["recurrent"]
    for backend in ("parallel", "chunkwise"):
        logits, grads = results[backend]
        assert_close(logits, ref_logits, rtol=1e-10, atol_floor=1e-12, msg=backend)
        for name in ref_grads:
            assert_close(grads[name], ref_grads[name], rtol=1e-8, atol_floor=1e-12, msg=f"{backend} {name}")


def test_loss_ignores_index_and_matches_manual_cross_entropy():
    model = tiny_model("ms")
    ids = torch.randint(0, 37, (2, 9))
    labels = ids.clone()
    labels[:, :4] = -100
    out = model(ids, labels=labels)
    manual = torch.nn.functional.cross_entropy(out.logits[:, 4:].reshape(-1, 37), ids[:, 4:].reshape(-1))
    assert_close(out.loss, manual, rtol=1e-12, atol_floor=0.0)


def test_input_errors_are_clear():
    model = tiny_model("m")
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 37\)"):
        model(torch.tensor([[1, 40]]))
    with pytest.raises(ValueError, match="input_ids must be"):
        model(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="state has 3 entries"):
        model(torch.tensor([[1, 2]]), state=[(), (), ()])


def test_unknown_and_invalid_config_keys_name_the_key():
    with pytest.raises(ConfigError, match="mlstm.num_headz"):
        from_dict(ModelConfig, {"mlstm": {"num_headz": 4}}, "model")
    with pytest.raises(ConfigError, match="model.d_model: expected an integer"):
        from_dict(ModelConfig, {"d_model": "big"}, "model")
    with pytest.raises(ConfigError, match="model.block"):
        from_dict(ModelConfig, {"block": "transformer"}, "model")
    with pytest.raises(ConfigError, match=r"pattern has unknown letter\(s\) \['z'\]"):
        from_dict(ModelConfig, {"num_blocks": 2, "pattern": "mz"})
    with pytest.raises(ConfigError, match="3 letters but num_blocks=2"):
        from_dict(ModelConfig, {"num_blocks": 2, "pattern": "mmm"})
    with pytest.raises(ConfigError, match="slstm_at index 5"):
        from_dict(ModelConfig, {"num_blocks": 2, "slstm_at": [5]})
    with pytest.raises(ConfigError, match="not divisible by slstm.num_heads"):
        from_dict(ModelConfig, {"d_model": 30, "num_blocks": 1, "block": "slstm", "slstm": {"num_heads": 4}})
    with pytest.raises(ConfigError, match="must look like"):
        apply_overrides({}, ["model.d_model"])


def test_overrides_and_base_inheritance():
    data = apply_overrides(load_yaml("configs/xlstm/xlstm71_125m.yaml"), ["model.num_blocks=8", "model.slstm_at=[3]"])
    cfg = from_dict(ModelConfig, data["model"], "model")
    assert cfg.num_blocks == 8 and cfg.block_kinds == ["mlstm"] * 3 + ["slstm"] + ["mlstm"] * 4
    assert cfg.vocab_size == 50304  # from the base file


EXPECTED_PARAMS = {  # millions, with the embedding counted once (tied) for the paper sizes
    "xlstm71_125m": 125, "xlstm10_125m": 125, "xlstm71_350m": 350, "xlstm10_350m": 350,
    "xlstm71_760m": 760, "xlstm10_760m": 760, "xlstm71_1.3b": 1300, "xlstm10_1.3b": 1300,
    "xlstm7b": 6900, "lstm_ptb_small": 4.6, "lstm_ptb_medium": 19.8,
    # the xLSTM paper's Llama baselines (untied head; 407M is its Table 1's 350M-class count)
    "llama_125m": 162.2, "llama_350m": 407, "llama_760m": 834.1, "llama_1.3b": 1420.4,
}


# configs/finetune/ holds run configs without a model section (the model comes from
# --init-from); configs/accelerate/ holds `accelerate launch` files and configs/study/
# tools/study.py files, not run configs.
MODEL_CONFIGS = sorted(
    p for p in glob.glob("configs/**/*.yaml", recursive=True)
    if "/_" not in p and "configs/finetune/" not in p and "configs/accelerate/" not in p and "configs/study/" not in p
)


@pytest.mark.parametrize("path", MODEL_CONFIGS)
def test_every_shipped_config_builds(path):
    data = load_yaml(path)
    cfg = from_dict(ModelConfig, data["model"], "model")
    with torch.device("meta"):
        model = XLSTMLM(cfg)
    name = re.sub(r"\.yaml$", "", path.split("/")[-1])
    if name in EXPECTED_PARAMS:
        got = model.num_params() / 1e6
        assert abs(got - EXPECTED_PARAMS[name]) / EXPECTED_PARAMS[name] < 0.06, f"{name}: {got:.1f}M params"
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embedding"))
    assert model.flops_per_token(2048) >= 6 * matrices


def test_flops_per_token_counts_dense_weights_and_cell():
    model = tiny_model("m", dtype=torch.float32, tie_embeddings=False)
    dense = sum(p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embedding"))
    layer = model.blocks[0].mlstm
    H, dh = layer.num_heads, layer.inner // layer.num_heads
    cell = H * (4 * dh * dh + 2 * dh * 8)
    assert model.flops_per_token(100) == pytest.approx(3 * (2 * dense + cell))


def test_flops_per_token_counts_attention_scores_and_values():
    """QK^T and AV over the causal half: 2 Dh seq_len FLOPs per query head and token
    (grouped-query key/value heads save none); training is 3x the forward."""
    model = tiny_model("a", dtype=torch.float32)
    dense = sum(p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embedding"))
    attn = model.blocks[0].attention
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim) == (4, 2, 8)
    for seq_len in (100, 2048):
        assert model.flops_per_token(seq_len) == pytest.approx(3 * (2 * dense + 4 * 2 * 8 * seq_len))


def test_generate_greedy_equals_full_recomputation():
    model = tiny_model("msxa")
    prompt = torch.randint(0, 37, (2, 5))
    out = model.generate(prompt, max_new_tokens=8, temperature=0)
    seq = prompt
    for _ in range(8):
        nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_generate_sampling_is_seeded_and_in_vocab():
    model = tiny_model("ms", dtype=torch.float32)
    prompt = torch.randint(0, 37, (1, 3))
    a = model.generate(prompt, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (1, 13) and int(a.max()) < 37


def test_block_letters_cover_every_kind():
    from typing import get_args

    from xlstm_lm.config import BlockKind

    assert sorted(BLOCK_LETTERS.values()) == sorted(get_args(BlockKind))


def test_bf16_forward_is_finite_and_close_to_fp32():
    model = tiny_model("msxa", dtype=torch.float32)
    ids = torch.randint(0, 37, (2, 24))
    ref = model(ids).logits
    out = model.to(torch.bfloat16)(ids).logits
    assert out.dtype == torch.bfloat16
    # bf16 weights and activations: ~3 significant digits per op
    assert_close(out, ref, rtol=3e-2, atol_floor=0.0)


def test_initialisation_follows_the_papers():
    model = XLSTMLM(from_dict(ModelConfig, {**SMALL, "num_blocks": 3, "pattern": "msx", "mlstm7b": {"num_heads": 2}}))
    m, s, x = model.blocks
    assert torch.allclose(m.mlstm.fgate.bias, torch.linspace(3, 6, 2))
    assert torch.all(m.mlstm.fgate.weight == 0) and torch.all(m.mlstm.igate.weight == 0)
    assert torch.all(x.mlstm.igate.bias == -10.0)
    fb = s.slstm.bias[:, 1]
    # power-law forget-gate bias: decreasing from +5 to -7 over each head's units
    assert fb[0, 0].item() == pytest.approx(5.0) and fb[0, -1].item() == pytest.approx(-7.0)
    assert torch.all(s.slstm.recurrent_kernel == 0)


def test_attention_initialisation_is_the_other_blocks_scheme():
    """q/k/v: small init N(0, sqrt(2 / 5d)); output projections: wang init N(0, 2 / (L sqrt(d)));
    the same scheme as the xLSTM-7B block's projections and SwiGLU."""
    d, blocks = 256, 4
    model = XLSTMLM(from_dict(ModelConfig, {**SMALL, "d_model": d, "num_blocks": blocks, "pattern": "a" * blocks}))
    layer, ffn = model.blocks[0].attention, model.blocks[0].ffn
    small, wang = (2 / (5 * d)) ** 0.5, 2 / blocks / d**0.5
    for w, std in ((layer.q.weight, small), (layer.k.weight, small), (layer.v.weight, small), (ffn.gate.weight, small),
                   (layer.out_proj.weight, wang), (ffn.down.weight, wang)):
        assert w.std().item() == pytest.approx(std, rel=0.05) and abs(w.mean().item()) < 0.1 * std
    assert layer.q.bias is None and layer.out_proj.bias is None and ffn.up.bias is None


def test_attention_config_errors_name_the_key():
    base = {**SMALL, "num_blocks": 1, "pattern": "a"}
    with pytest.raises(ConfigError, match=r"d_model=32 is not divisible by attention.num_heads=5"):
        from_dict(ModelConfig, {**base, "attention": {"num_heads": 5}})
    with pytest.raises(ConfigError, match=r"attention.num_heads=4 is not a multiple of attention.num_kv_heads=3"):
        from_dict(ModelConfig, {**base, "attention": {"num_heads": 4, "num_kv_heads": 3}})
    with pytest.raises(ConfigError, match=r"head dim 1 .* must be even"):
        from_dict(ModelConfig, {**base, "attention": {"num_heads": 32}})
    with pytest.raises(ConfigError, match=r"attention.num_kv_heads must be positive"):
        from_dict(ModelConfig, {**base, "attention": {"num_kv_heads": 0}})
    # only checked where an attention block exists
    assert from_dict(ModelConfig, {**base, "pattern": "m", "attention": {"num_heads": 5}}).attention.num_heads == 5


def test_output_unpacks_as_logits_and_state():
    model = tiny_model("ms")
    ids = torch.randint(0, 37, (1, 6))
    logits, state = model(ids[:, :3])
    logits2, _ = model(ids[:, 3:], state)
    assert_close(torch.cat([logits, logits2], 1), model(ids).logits, rtol=1e-10, atol_floor=1e-12)


@pytest.mark.parametrize("pattern", PATTERNS, ids=[f"pattern-{p}" for p in PATTERNS])
def test_left_padded_batch_equals_rows_alone(pattern):
    """Padding tokens leave the state untouched: a left-padded batch gives each row's
    own logits at its real positions, and the same continuation state."""
    model = tiny_model(pattern)
    lengths = [9, 5, 1]
    T = max(lengths)
    rows = [torch.randint(1, 37, (1, n)) for n in lengths]
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, T - row.shape[1] :] = row
        mask[r, T - row.shape[1] :] = 1
    batch = model(ids, attention_mask=mask)
    nxt = torch.randint(1, 37, (len(rows), 3))
    cont = model(nxt, batch.state)
    for r, row in enumerate(rows):
        alone = model(row)
        n = row.shape[1]
        assert_close(batch.logits[r : r + 1, T - n :], alone.logits, rtol=1e-10, atol_floor=1e-12, msg=f"row {r}")
        alone_cont = model(nxt[r : r + 1], alone.state)
        assert_close(cont.logits[r : r + 1], alone_cont.logits, rtol=1e-10, atol_floor=1e-12, msg=f"cont {r}")


def test_left_padding_gradients_are_finite():
    model = tiny_model("msxa")
    ids = torch.randint(0, 37, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :7] = 0
    out = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    out.loss.backward()
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name
