"""A model fine-tuned on chat data (``data.sft``, a ``messages`` list) exports with its chat
template: in the exported folder ``tokenizer.apply_chat_template(messages,
add_generation_prompt=True)`` gives exactly the token ids the fine-tuning put before the
answer, and the whole conversation the ids it trained on (eos after every answer)."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch

from tests.hf import tiny_hf_model
from tests.training.test_finetune import sft_raw
from xlstm_lm.data.sft import ChatFormatter
from xlstm_lm.data.tokenizers import ByteTokenizer, HFTokenizer, SentencePieceTokenizer
from xlstm_lm.hf.export import PROBE_CONVERSATION, byte_tokenizer_fast, chat_template_problem, export_model

CONVERSATIONS = [
    [{"role": "user", "content": "reverse: abc"}, {"role": "assistant", "content": "cba"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi\nthere"},
     {"role": "assistant", "content": "yo"}, {"role": "user", "content": "again  ?"},
     {"role": "assistant", "content": "yo yo\n"}],
]


def trained_prompt(fmt: ChatFormatter, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids before the last answer, ids of the whole conversation) as fine-tuning encodes them."""
    ids, trained = fmt.encode(messages)
    start = len(ids)
    while start > 0 and trained[start - 1]:
        start -= 1
    return ids[:start], ids


def assert_template_reproduces_training(out_dir, fmt: ChatFormatter) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir, trust_remote_code=True)
    for messages in [*CONVERSATIONS, PROBE_CONVERSATION]:
        prompt, whole = trained_prompt(fmt, messages)
        out = tok.apply_chat_template(messages[:-1], add_generation_prompt=True)
        assert out["input_ids"] == prompt, (fmt.template, messages)
        assert tok.apply_chat_template(messages, return_dict=False) == whole, (fmt.template, messages)
    # a single user turn: the ids the generation helper of fine-tuning builds
    first = CONVERSATIONS[0][:1]
    assert tok.apply_chat_template(first, add_generation_prompt=True, return_dict=False) == fmt.prompt_ids(first)


@pytest.mark.parametrize("template", ["simple", "plain"])
def test_sft_run_exports_its_chat_template(tmp_path, template, capsys):
    from tools.export_hf import main as export_main
    from xlstm_lm.training import train

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS * 4))
    raw = sft_raw(tmp_path / "run", data, steps=1)
    raw["data"]["sft"].update(chat_template=template, format="messages")
    raw["train"].update(batch_size=2, eval_batches=1)
    train(raw, progress=False)
    assert export_main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert "verified: apply_chat_template gives the fine-tuning token ids" in capsys.readouterr().out
    assert (tmp_path / "hf" / "chat_template.jinja").is_file()
    assert_template_reproduces_training(tmp_path / "hf", ChatFormatter(ByteTokenizer(), template))


@pytest.mark.parametrize("kind", ["sentencepiece", "hf-own-template", "hf-simple", "hf-eos-not-parsed"])
def test_other_tokenizers_ship_the_training_template(tmp_path, kind):
    """Sentencepiece (eos is a control symbol: the exported tokenizer parses it in chat
    templates only) and Hugging Face tokenizers with their own template or ours; their eos
    token must be parsed from text, else no template can write it (the check says so)."""
    if kind == "sentencepiece":
        files = sorted(glob.glob(os.path.join(os.path.dirname(json.__file__), "*.py")))
        tokenizer = SentencePieceTokenizer.train([open(f, encoding="utf-8").read() for f in files], vocab_size=400)
        template = "simple"
    else:
        hf = byte_tokenizer_fast()
        # as most Hugging Face tokenizers: special-token text is the special token
        hf.split_special_tokens = kind == "hf-eos-not-parsed"
        if kind == "hf-own-template":
            hf.chat_template = (
                "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}"
                "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}[assistant]{% endif %}"
            )
        hf.save_pretrained(tmp_path / "tok")
        tokenizer = HFTokenizer(str(tmp_path / "tok"))
        template = "auto"
    run_cfg = {"data": {"sft": {"path": "chat.jsonl", "chat_template": template}}}
    model = tiny_hf_model("m", dtype=torch.float32, vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.eos_id)
    export_model(model, tokenizer, tmp_path / "hf", run_cfg)
    fmt = ChatFormatter(tokenizer, template)
    assert fmt.template == ("hf" if kind == "hf-own-template" else "simple")
    problem = chat_template_problem(tmp_path / "hf", tokenizer, run_cfg)
    if kind == "hf-eos-not-parsed":
        assert problem is not None and "probe conversation" in problem
        return
    assert problem is None
    assert_template_reproduces_training(tmp_path / "hf", fmt)
