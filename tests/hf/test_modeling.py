"""XLSTMLMConfig / XLSTMLMForCausalLM: config validation, registration, forward parity with
XLSTMLM, save/load (safetensors, tied weights, dtype, device_map), gradient
checkpointing, and clear errors for weights of another architecture."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from tests.helpers import assert_close
from tests.hf import ALL_KINDS, REPO, tiny_hf_model, tiny_model_dict
from xlstm_lm.config_utils import ConfigError
from xlstm_lm.hf.cache import XLSTMLMCache
from xlstm_lm.hf.compat import activation_checkpointing, output_cache
from xlstm_lm.hf.configuration import XLSTMLMConfig
from xlstm_lm.hf.modeling import XLSTMLMForCausalLM


def test_config_round_trip_derived_fields_and_unknown_key(tmp_path):
    cfg = XLSTMLMConfig(model=tiny_model_dict("msx", tie_embeddings=True), eos_token_id=0, pad_token_id=0)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.tie_word_embeddings) == (37, 32, 3, True)
    cfg.save_pretrained(tmp_path)
    again = XLSTMLMConfig.from_pretrained(tmp_path)
    assert again.model == cfg.model and again.model_config == cfg.model_config
    assert (again.eos_token_id, again.pad_token_id, again.tie_word_embeddings) == (0, 0, True)
    # a stale top-level tie flag cannot disagree with the model section
    assert XLSTMLMConfig(model=tiny_model_dict("m"), tie_word_embeddings=True).tie_word_embeddings is False

    # a key written by a newer version, nested or top-level in `model`
    data = json.loads((tmp_path / "config.json").read_text())
    data["model"]["mlstm"]["rope_theta"] = 1.0
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"model\.mlstm\.rope_theta.*newer xlstm_lm"):
        XLSTMLMConfig.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"model\.future_flag"):
        XLSTMLMConfig(model={**tiny_model_dict("m"), "future_flag": True})


def test_import_is_lazy_and_registers_auto_classes():
    # `import xlstm_lm` must not import transformers, and the hook costs well under 1 s
    code = (
        "import sys; import xlstm_lm\n"
        "assert 'transformers' not in sys.modules\n"
        "from transformers import AutoConfig, AutoModelForCausalLM\n"
        "cfg = AutoConfig.for_model('xlstm_lm', model={'d_model': 32, 'pattern': 'l', 'num_blocks': 1})\n"
        "print(type(cfg).__name__, type(AutoModelForCausalLM.from_config(cfg)).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["XLSTMLMConfig", "XLSTMLMForCausalLM"]
    # -X importtime lines: "import time: self [us] | cumulative [us] | name"
    cumulative = {ln.split("|")[2].strip(): int(ln.split("|")[1]) for ln in out.stderr.splitlines() if ln.startswith("import time:") and ln.count("|") == 2 and ln.split("|")[1].strip().isdigit()}
    assert cumulative["xlstm_lm.hf"] < 1_000_000, cumulative["xlstm_lm.hf"]


def test_forward_equals_xlstmlm_for_every_block_kind():
    model = tiny_hf_model(ALL_KINDS)
    ids = torch.randint(0, 37, (2, 19))
    ref = model.model(ids)
    out = model(ids, use_cache=True)
    assert_close(out.logits, ref.logits, rtol=0, atol_floor=0, msg="logits")
    for block_ours, block_ref in zip(output_cache(out).states, ref.state):
        for a, b in zip(block_ours, block_ref):
            assert_close(a, b, rtol=0, atol_floor=0, msg="state")
    # HF convention: labels are shifted inside
    loss = model(ids, labels=ids).loss
    shifted = ids.clone()
    shifted[:, :-1], shifted[:, -1] = ids[:, 1:], -100
    assert_close(loss, model.model(ids, labels=shifted).loss, rtol=1e-12, atol_floor=0)
    # inputs_embeds path, hidden states (embedding + one per block, last one normed)
    emb = model.get_input_embeddings()(ids)
    out_e = model(inputs_embeds=emb, output_hidden_states=True)
    assert_close(out_e.logits, ref.logits, rtol=0, atol_floor=0)
    assert len(out_e.hidden_states) == len(ALL_KINDS) + 1
    # cache continuation: two halves == one pass; logits_to_keep
    a = model(ids[:, :7], use_cache=True)
    b = model(ids[:, 7:], cache=output_cache(a), use_cache=True, logits_to_keep=1)
    assert isinstance(output_cache(b), XLSTMLMCache) and output_cache(b).get_seq_length() == 19
    assert_close(b.logits, ref.logits[:, -1:], rtol=1e-10, atol_floor=1e-12)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_save_pretrained_from_pretrained_safetensors(tmp_path, tied):
    model = tiny_hf_model("mx", dtype=torch.float32, tie_embeddings=tied)
    assert (model.model.lm_head.weight is model.model.embedding.weight) == tied
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.embedding.weight" in keys and ("model.lm_head.weight" in keys) == (not tied)
    loaded = XLSTMLMForCausalLM.from_pretrained(tmp_path)
    assert (loaded.model.lm_head.weight is loaded.model.embedding.weight) == tied
    ids = torch.randint(0, 37, (2, 11))
    assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol_floor=0)

    from transformers import AutoModelForCausalLM

    half = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map="auto")
    assert half.model.embedding.weight.dtype == torch.bfloat16 and half.device.type == "cpu"
    # bf16 weights and activations: ~3 significant digits
    assert_close(half(ids).logits.float(), model(ids).logits, rtol=3e-2, atol_floor=0, msg="bf16")


def test_weights_of_another_architecture_are_an_error(tmp_path):
    tiny_hf_model("m", dtype=torch.float32).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["model"] = tiny_model_dict("s")
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="do not fit the architecture.*(missing|unexpected)"):
        XLSTMLMForCausalLM.from_pretrained(tmp_path)
    data["model"] = tiny_model_dict("m", d_model=64)
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises((ValueError, RuntimeError), match="(?i)size|mismatch|do not fit"):
        XLSTMLMForCausalLM.from_pretrained(tmp_path)


def test_gradient_checkpointing_per_block_gives_the_same_gradients():
    ids = torch.randint(0, 37, (2, 13))
    grads = []
    for enable in (False, True):
        model = tiny_hf_model("msxl", perturb=0.1).train()
        calls = []
        if enable:
            activation_checkpointing(model, True, use_reentrant=False)
            for block in model.model.blocks:
                inner = block._gradient_checkpointing_func

                def counting(fn, *args, _calls=calls, _inner=inner, **kwargs):
                    _calls.append(fn)
                    return _inner(fn, *args, **kwargs)

                block._gradient_checkpointing_func = counting
        model(ids, labels=ids).loss.backward()
        assert len(calls) == (4 if enable else 0)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], rtol=1e-10, atol_floor=1e-14, msg=name)
