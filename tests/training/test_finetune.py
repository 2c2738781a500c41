"""Fine-tuning end to end: --init-from, SFT data (masks, packing, resets), LoRA, merge, export.

The instruction task: "reverse: abc" -> "cba" on 3-letter words over the letters a-h.
A base model is first trained (SFT, from scratch) on "copy: abc" -> "abc"; it answers
the reverse prompts of held-out words wrongly (palindromes are excluded). Fine-tuning
from it on reverse examples (full, and LoRA) must then answer the held-out words.
Every run is the tiny debug model shrunk to d_model 64, two mLSTM blocks, CPU, float32.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_close
from xlstm_lm.config import ModelConfig
from xlstm_lm.config_utils import ConfigError, from_dict
from xlstm_lm.data.sft import IGNORE_INDEX, ChatFormatter, SFTBatches, pack_examples, to_messages
from xlstm_lm.data.tokenizers import ByteTokenizer
from xlstm_lm.models import XLSTMLM
from xlstm_lm.training import train
from xlstm_lm.training.checkpoint import load_checkpoint_config, load_checkpoint_weights
from xlstm_lm.training.cli import main
from xlstm_lm.training.lora import DEFAULT_TARGET_MODULES, load_lora_checkpoint, merge_lora, merge_lora_checkpoint

LETTERS = "abcdefgh"
WORDS = [a + b + c for a in LETTERS for b in LETTERS for c in LETTERS if a != c]
random.Random(0).shuffle(WORDS)
HELD_OUT, TRAIN_WORDS = WORDS[:32], WORDS[32:]


def write_task(path: Path, task: str, words: list[str]) -> Path:
    answer = (lambda w: w[::-1]) if task == "reverse" else (lambda w: w)
    path.write_text("".join(json.dumps({"prompt": f"{task}: {w}", "response": answer(w)}) + "\n" for w in words))
    return path


def sft_raw(run_dir: Path, data: Path, steps: int, **train_extra) -> dict:
    return {
        "model": {"d_model": 64, "num_blocks": 2, "pattern": "mm", "mlstm": {"num_heads": 4, "chunk_size": 16}},
        "train": {
            "max_steps": steps, "batch_size": 16, "seq_len": 64, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 10,
            "weight_decay": 0.0, "eval_every": 1000, "eval_batches": 1, "log_every": 50, "save_every": 1000,
            "device": "cpu", "run_dir": str(run_dir), "sample_tokens": 0, **train_extra,
        },
        "data": {"tokenizer": "byte", "sft": {"path": str(data), "chat_template": "plain"}},
    }


def load_model(ckpt: Path) -> XLSTMLM:
    model = XLSTMLM(from_dict(ModelConfig, load_checkpoint_config(ckpt)["model"]))
    load_checkpoint_weights(model, ckpt)
    return model.eval()


@torch.no_grad()
def answers(model: torch.nn.Module, task: str, words: list[str]) -> list[str]:
    """Greedy answers (4 tokens: 3 letters + eos) to the prompts of ``words``, decoded up to eos."""
    fmt = ChatFormatter(ByteTokenizer(), "plain")
    prompts = torch.tensor([fmt.prompt_ids(f"{task}: {w}") for w in words])
    out = model.generate(prompts, max_new_tokens=4, temperature=0)[:, prompts.shape[1]:]
    return [bytes(row).split(b"\0")[0].decode(errors="replace") if 0 in row else "<no eos>" for row in out.tolist()]


def accuracy(model: torch.nn.Module, words: list[str] = HELD_OUT) -> float:
    return sum(a == w[::-1] for a, w in zip(answers(model, "reverse", words), words)) / len(words)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A model trained from scratch on the copy task (the 'pretrained' starting point)."""
    tmp = tmp_path_factory.mktemp("base")
    torch.set_num_threads(1)
    result = train(sft_raw(tmp / "run", write_task(tmp / "copy.jsonl", "copy", TRAIN_WORDS), steps=100), progress=False)
    return result.run_dir


# --- data ---------------------------------------------------------------------------
def test_formatter_masks_prompt_and_ends_response_with_eos():
    tok = ByteTokenizer()
    fmt = ChatFormatter(tok, "simple")
    messages = to_messages({"prompt": "hi", "response": "yo"}, "auto")
    ids, trained = fmt.encode(messages)
    text = "<|user|>\nhi\n<|assistant|>\n"
    assert ids == list(text.encode()) + list(b"yo") + [tok.eos_id]
    assert trained == [False] * len(text) + [True] * 3
    assert fmt.prompt_ids("hi") == list(text.encode())
    ids2, _ = fmt.encode(to_messages({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "auto"))
    assert ids2 == ids


def hf_tokenizer_with_template(folder: Path):
    """A byte-level HF tokenizer whose own chat template renders <role>content."""
    from xlstm_lm.data.tokenizers import HFTokenizer
    from xlstm_lm.hf.export import byte_tokenizer_fast

    hf = byte_tokenizer_fast()
    hf.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    hf.save_pretrained(folder)
    return HFTokenizer(str(folder))


def test_hf_chat_template_masks_all_but_the_assistant(tmp_path):
    tok = hf_tokenizer_with_template(tmp_path)
    fmt = ChatFormatter(tok, "auto")
    assert fmt.template == "hf"
    messages = to_messages({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                         {"role": "assistant", "content": "yo"}]}, "messages")
    ids, trained = fmt.encode(messages)
    assert tok.decode(ids) == "<system>be brief<user>hi<assistant>yo\0"
    assert [i for i, t in zip(ids, trained) if t] == tok.encode("yo") + [tok.eos_id]
    assert tok.decode(fmt.prompt_ids(messages[:2])) == "<system>be brief<user>hi<assistant>"


@pytest.mark.parametrize("template", ["simple", "plain", "hf"])
def test_multi_turn_prompt_ids_are_the_training_ids_up_to_the_answer(template, tmp_path):
    # Earlier assistant turns end with eos in training; the generation prompt must too.
    tok = hf_tokenizer_with_template(tmp_path) if template == "hf" else ByteTokenizer()
    fmt = ChatFormatter(tok, template)
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
             {"role": "user", "content": "again"}, {"role": "assistant", "content": "ok"}]
    ids, trained = fmt.encode(turns)
    answer = [i for i, t in zip(ids, trained) if t][-(len(tok.encode("ok")) + 1):]
    prompt = fmt.prompt_ids(turns[:3])
    assert prompt + answer == ids
    assert tok.eos_id in prompt  # the first answer's end


def test_packing_labels_and_resets():
    tok = ByteTokenizer()
    fmt = ChatFormatter(tok, "plain")
    examples = [fmt.encode(to_messages({"prompt": p, "response": r}, "prompt_response")) for p, r in (("ab", "c"), ("d", "ef"), ("g", "h"))]
    rows, cut = pack_examples(examples, seq_len=8, pad_id=0)
    assert cut == 0 and rows.shape == (2, 8)
    # "ab\nc<eos>" -> inputs a b \n c; targets b(-) \n(-) c <eos>; then "d\nef<eos>" (4 inputs) fills the row.
    assert rows.input_ids[0].tolist() == list(b"ab\nc") + list(b"d\nef")
    assert rows.labels[0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, ord("c"), 0, IGNORE_INDEX, ord("e"), ord("f"), 0]
    assert rows.reset[0].tolist() == [True, False, False, False, True, False, False, False]
    # last row: "g\nh<eos>" (3 inputs) then padding, which starts a document of its own and is not trained
    assert rows.reset[1].tolist() == [True, False, False, True, False, False, False, False]
    assert rows.labels[1, 3:].eq(IGNORE_INDEX).all()


def test_packed_example_equals_example_alone():
    """With reset, the second example of a row gets the logits it gets on its own."""
    torch.manual_seed(0)
    cfg = {"d_model": 32, "num_blocks": 2, "pattern": "ms", "mlstm": {"num_heads": 2, "chunk_size": 4}, "slstm": {"num_heads": 2}}
    model = XLSTMLM(from_dict(ModelConfig, cfg)).eval()
    fmt = ChatFormatter(ByteTokenizer(), "plain")
    a, b = (fmt.encode(to_messages({"prompt": p, "response": r}, "auto")) for p, r in (("abc", "x"), ("de", "yz")))
    rows, _ = pack_examples([a, b], seq_len=16, pad_id=0)
    packed = model(rows.input_ids, reset=rows.reset).logits[0, len(a[0]) - 1 : len(a[0]) + len(b[0]) - 2]
    alone = model(torch.tensor([b[0][:-1]])).logits[0]
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_sft_batches_resume_exactly():
    rows, _ = pack_examples([([1, 2, 3, 0], [False, False, True, True])] * 7, seq_len=3, pad_id=0)
    a = SFTBatches(rows, batch_size=3, seed=1)
    for _ in range(2):
        a.next_batch()
    b = SFTBatches(rows, batch_size=3, seed=1)
    b.load_state_dict(a.state_dict())
    for _ in range(4):
        assert torch.equal(a.next_batch().input_ids, b.next_batch().input_ids)


def test_lora_default_targets_match_hf_wrapper():
    from xlstm_lm.hf.modeling import LORA_TARGET_MODULES

    assert tuple(DEFAULT_TARGET_MODULES) == tuple(LORA_TARGET_MODULES)


# --- LoRA on nn.Linear and head-wise layers ------------------------------------------
# The names of the layers that take adapters in "m", "s" and "x" blocks, by kind.
LINEAR_NAMES = ["proj_up", "proj_down", "igate", "fgate", "gate", "up", "down", "q", "k", "v", "ogate", "out_proj"]
HEADWISE_NAMES = ["q_proj", "k_proj", "v_proj", "igate", "fgate", "zgate", "ogate"]


def adapted_model(pattern: str, target_modules, dropout: float = 0.0, dtype: torch.dtype = torch.float32):
    """The tiny test model with adapters whose B is moved away from zero (a trained adapter)."""
    from tests.models.test_lm import tiny_model
    from xlstm_lm.training.lora import LoraSettings, apply_lora

    model = apply_lora(tiny_model(pattern, dtype=dtype), LoraSettings(target_modules=target_modules, dropout=dropout))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0.0, 0.1)
    return model.eval()


def test_lora_targets_name_linear_and_headwise_layers():
    # igate/fgate are nn.Linear in mLSTM blocks and head-wise layers in the sLSTM block: both get adapters
    from peft.tuners.lora import Linear as PeftLinear

    from xlstm_lm.layers.lora import HeadwiseLoraLinear

    model = adapted_model("ms", ["proj_up", "igate", "fgate", "q_proj"])
    adapted = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert sorted(adapted) == ["blocks.0.mlstm.fgate", "blocks.0.mlstm.igate", "blocks.0.mlstm.proj_up",
                               "blocks.0.mlstm.q_proj", "blocks.1.slstm.fgate", "blocks.1.slstm.igate"]
    assert isinstance(adapted["blocks.0.mlstm.igate"], PeftLinear)
    assert isinstance(adapted["blocks.1.slstm.igate"], HeadwiseLoraLinear)
    assert isinstance(adapted["blocks.0.mlstm.q_proj"], HeadwiseLoraLinear)
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())


def test_lora_default_targets_adapt_headwise_qkv_and_7b_projections():
    from xlstm_lm.training.lora import LoraSettings, adaptable_layers, apply_lora
    from tests.models.test_lm import tiny_model

    for pattern, expected in (("m", {"proj_up", "proj_down", "q_proj", "k_proj", "v_proj"}),
                              ("x", {"q", "k", "v", "out_proj"})):
        model = tiny_model(pattern, dtype=torch.float32)
        layers = adaptable_layers(model)
        model = apply_lora(model, LoraSettings(r=8))
        adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
        assert {n.rsplit(".", 1)[-1] for n in adapted} == expected, pattern
        # r * (in + out) per adapted layer, nn.Linear or head-wise alike; nothing else trains
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == sum(8 * (layers[n].in_features + layers[n].out_features) for n in adapted), pattern


def test_lora_target_names_matching_nothing_list_both_kinds():
    from xlstm_lm.training.lora import LoraSettings, apply_lora
    from tests.models.test_lm import tiny_model

    with pytest.raises(ConfigError) as err:
        apply_lora(tiny_model("ms", dtype=torch.float32), LoraSettings(target_modules=["q", "out_proj"]))
    msg = str(err.value)
    assert "nn.Linear names ['down', 'fgate', 'gate', 'igate', 'lm_head', 'proj_down', 'proj_up', 'up']" in msg
    assert "head-wise (HeadwiseLinear) names ['fgate', 'igate', 'k_proj', 'ogate', 'q_proj', 'v_proj', 'zgate']" in msg


def test_lora_without_peft_names_the_extra(monkeypatch):
    import sys

    from tests.models.test_lm import tiny_model
    from xlstm_lm.extras import MissingExtra
    from xlstm_lm.training.lora import LoraSettings, apply_lora

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingExtra, match=r"train.lora needs the peft package.*xlstm-lm\[finetune\]"):
        apply_lora(tiny_model("m", dtype=torch.float32), LoraSettings())


def load_plain_base(adapted: torch.nn.Module, plain: XLSTMLM) -> XLSTMLM:
    """``plain`` with the base weights of ``adapted`` (peft's ``<name>.base_layer.weight``)."""
    base = {n.replace(".base_layer", ""): p for n, p in adapted.state_dict().items() if "lora_" not in n}
    plain.load_state_dict(base)
    return plain.eval()


@pytest.mark.parametrize(
    "pattern,targets",
    [
        pytest.param("msm", LINEAR_NAMES + HEADWISE_NAMES, id="m+s-blocks-every-layer"),
        pytest.param("msm", HEADWISE_NAMES, id="m+s-blocks-headwise-only"),
        pytest.param("xx", list(DEFAULT_TARGET_MODULES), id="7b-layout-defaults"),
        pytest.param("xx", LINEAR_NAMES, id="7b-layout-every-layer"),
    ],
)
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
def test_lora_merge_equals_unmerged_and_leaves_the_plain_model(pattern, targets, dtype, rtol):
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = adapted_model(pattern, targets, dtype=dtype)
    plain = XLSTMLM(model.config).to(dtype)
    ids = torch.randint(0, 37, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unmerged = model(ids).logits
        assert not torch.allclose(unmerged, load_plain_base(model, plain)(ids).logits, atol=1e-4), "adapters act"
        merged = merge_lora(model)
        # merging adds B @ A into each weight: the same function up to rounding (fp64: 1e-12)
        assert_close(merged(ids).logits, unmerged, rtol=rtol, atol_floor=0, msg=pattern)
    assert type(merged) is XLSTMLM and not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert {n: p.shape for n, p in merged.state_dict().items()} == {n: p.shape for n, p in plain.state_dict().items()}
    assert all(p.requires_grad for p in merged.parameters())


def test_lora_dropout_is_active_in_training_only():
    model = adapted_model("ms", ["q_proj", "zgate", "proj_up"], dropout=0.3)
    ids = torch.randint(0, 37, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.train()
        a, b = model(ids).logits, model(ids).logits
        assert not torch.equal(a, b)
        model.eval()
        unmerged = model(ids).logits
        assert torch.equal(model(ids).logits, unmerged)
        assert_close(merge_lora(model)(ids).logits, unmerged, rtol=1e-6, atol_floor=0)


# --- init-from ----------------------------------------------------------------------
def test_init_from_rejects_shape_changes_and_other_tokenizers(base_run, tmp_path):
    data = write_task(tmp_path / "rev.jsonl", "reverse", TRAIN_WORDS[:50])
    raw = sft_raw(tmp_path / "a", data, steps=1, init_from=str(base_run))
    with pytest.raises(ConfigError, match="change parameter shapes"):
        train({**raw, "model": {"d_model": 32}}, progress=False)
    raw["data"]["tokenizer"] = "sentencepiece"
    with pytest.raises(ConfigError, match="sentencepiece"):
        train(raw, progress=False)


def test_init_from_loads_weights_continued_pretraining_cli(base_run, tmp_path, capsys):
    # The config file's model (tiny.yaml: d_model 128) is ignored; the source's (64) is used.
    run = tmp_path / "cont"
    code = main([
        "--init-from", str(base_run), "--run-dir", str(run), "train.max_steps=1", "train.lr=1e-12", "train.min_lr=0",
        "train.warmup_steps=0", "train.batch_size=2", "train.seq_len=32", "train.eval_batches=1", "train.sample_tokens=0",
        "train.device=cpu", "data.max_bytes=20000", "model.dropout=0.0",
    ])
    assert code == 0, capsys.readouterr().err
    cont = load_model(run / "checkpoints" / "step_0000001")
    base = load_model(Path(base_run) / "checkpoints" / "step_0000100")
    assert cont.config.d_model == 64
    for (name, p), q in zip(base.named_parameters(), cont.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6, msg=name)
    # shape-changing override on the command line: a clear error, exit code 2
    assert main(["--init-from", str(base_run), "--run-dir", str(tmp_path / "bad"), "model.d_model=32"]) == 2
    assert "change parameter shapes" in capsys.readouterr().err


def test_init_from_hf_folder_gives_the_checkpoint_weights(base_run, tmp_path):
    from xlstm_lm.hf.export import export_checkpoint
    from xlstm_lm.training.init_from import check_tokenizer, load_init_weights, prepare_init

    export_checkpoint(base_run, tmp_path / "hf")
    raw, source = prepare_init({"train": {"init_from": str(tmp_path / "hf")}})
    assert source.kind == "hf"
    model = XLSTMLM(from_dict(ModelConfig, raw["model"]))
    load_init_weights(model, source)
    check_tokenizer(source, ByteTokenizer(), model.config.vocab_size)
    base = load_model(Path(base_run) / "checkpoints" / "step_0000100")
    for (name, p), q in zip(base.state_dict().items(), model.state_dict().values()):
        assert torch.equal(p, q), name


# --- the instruction task ------------------------------------------------------------
def test_full_finetune_learns_reverse(base_run, tmp_path):
    base = load_model(Path(base_run) / "checkpoints" / "step_0000100")
    # Before fine-tuning the model copies (it was trained to): no held-out word is reversed.
    assert answers(base, "copy", HELD_OUT[:8]) == HELD_OUT[:8]
    assert accuracy(base) == 0.0
    data = write_task(tmp_path / "rev.jsonl", "reverse", TRAIN_WORDS)
    result = train(sft_raw(tmp_path / "full", data, steps=100, init_from=str(base_run)), progress=False)
    assert result.val_loss < 0.05
    assert accuracy(load_model(result.checkpoint)) == 1.0


def test_lora_finetune_learns_reverse_and_merges(base_run, tmp_path):
    data = write_task(tmp_path / "rev.jsonl", "reverse", TRAIN_WORDS)
    lora = {"r": 8, "alpha": 16, "dropout": 0.0}
    result = train(sft_raw(tmp_path / "lora", data, steps=150, init_from=str(base_run), lora=lora), progress=False)
    adapted, _, _ = load_lora_checkpoint(result.checkpoint)
    # only the adapters were trained: the base weights are the source's
    base = load_model(Path(base_run) / "checkpoints" / "step_0000100")
    adapted_state = adapted.state_dict()
    for name in ("proj_up", "q_proj"):  # an nn.Linear and a head-wise default target
        assert f"blocks.0.mlstm.{name}.lora_A.default.weight" in adapted_state
        assert torch.equal(adapted_state[f"blocks.0.mlstm.{name}.base_layer.weight"], base.state_dict()[f"blocks.0.mlstm.{name}.weight"])
    assert torch.equal(adapted_state["embedding.weight"], base.state_dict()["embedding.weight"])
    assert accuracy(adapted) == 1.0
    # merged (in memory and through the merged checkpoint) generates exactly what the adapted model does
    before = answers(adapted, "reverse", HELD_OUT)
    merged_dir = merge_lora_checkpoint(result.checkpoint, tmp_path / "merged")
    merged_file = load_model(merged_dir)
    merged = merge_lora(adapted)
    assert not any("lora" in n for n in merged.state_dict())
    assert answers(merged, "reverse", HELD_OUT) == before == answers(merged_file, "reverse", HELD_OUT)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged_file(ids).logits, merged(ids).logits)
    # tools/merge_lora.py: merged checkpoint + HF export, which transformers loads and which answers the same
    from transformers import AutoModelForCausalLM

    from tools.merge_lora import main as merge_main

    assert merge_main([str(result.run_dir), str(tmp_path / "merged_cli"), "--hf", str(tmp_path / "hf")]) == 0
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    assert answers(hf_model.model, "reverse", HELD_OUT) == before


def test_lora_sft_run_resumes_exactly(base_run, tmp_path):
    # nn.Linear and head-wise adapters, with adapter dropout (the RNG state resumes too)
    data = write_task(tmp_path / "rev.jsonl", "reverse", TRAIN_WORDS[:120])
    lora = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["proj_up", "q_proj", "v_proj"]}
    full = train(sft_raw(tmp_path / "full", data, steps=12, init_from=str(base_run), lora=lora), progress=False)
    first = train(sft_raw(tmp_path / "split", data, steps=12, init_from=str(base_run), lora=lora), progress=False, stop_at_step=5)
    assert first.interrupted
    rest = train(sft_raw(tmp_path / "split", data, steps=12, init_from=str(base_run), lora=lora), progress=False, resume=True)
    assert first.train_losses + rest.train_losses == full.train_losses
