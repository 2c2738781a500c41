"""eval/sft_accuracy.py: greedy exact-match accuracy of a fine-tuned model on JSONL rows.

The model is the "copy: abc" -> "abc" model of tests/training/test_finetune.py (trained
by SFT with the plain template): it answers copy prompts right and reverse prompts
wrong, so the accuracy of a mixed file is strictly between 0 and 1. It must equal the
accuracy computed by hand from ``XLSTMLM.generate``, one prompt at a time, on the
prompt ids fine-tuning used; the exported Hugging Face folder (its chat template)
must give the same answers.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.training.test_finetune import HELD_OUT, base_run, load_model  # noqa: F401  (base_run: fixture)
from xlstm_lm.data.sft import ChatFormatter
from xlstm_lm.data.tokenizers import ByteTokenizer

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("eval_sft_accuracy", REPO / "eval" / "sft_accuracy.py")
cli = importlib.util.module_from_spec(_spec)
sys.modules["eval_sft_accuracy"] = cli
_spec.loader.exec_module(cli)

SYSTEM = {"role": "system", "content": "be exact"}


def rows() -> list[dict]:
    """Copy rows (right), reverse rows (wrong), a reference with surrounding whitespace
    (right once stripped), a wrong reference, and messages rows (with a system turn, and
    with an earlier exchange: the reference is the last assistant message)."""
    out = [{"prompt": f"copy: {w}", "response": w} for w in HELD_OUT[:6]]
    out += [{"prompt": f"reverse: {w}", "response": w[::-1]} for w in HELD_OUT[6:9]]
    out += [{"prompt": f"copy: {HELD_OUT[9]}", "response": f"  {HELD_OUT[9]}\n"},
            {"prompt": f"copy: {HELD_OUT[10]}", "response": "xyz"}]
    out += [{"messages": [{"role": "user", "content": f"copy: {w}"}, {"role": "assistant", "content": w}]} for w in HELD_OUT[11:13]]
    out.append({"messages": [SYSTEM, {"role": "user", "content": "copy: abc"}, {"role": "assistant", "content": "abc"},
                             {"role": "user", "content": f"copy: {HELD_OUT[13]}"}, {"role": "assistant", "content": HELD_OUT[13]}]})
    return out


def write(path: Path, items: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


@torch.no_grad()
def hand_answers(model, items: list[dict], max_new_tokens: int) -> list[str]:
    """One prompt at a time through XLSTMLM.generate (greedy), cut at the first eos."""
    fmt = ChatFormatter(ByteTokenizer(), "plain")
    answers = []
    for r in items:
        messages = r["messages"][:-1] if "messages" in r else r["prompt"]
        prompt = torch.tensor([fmt.prompt_ids(messages)])
        new = model.generate(prompt, max_new_tokens=max_new_tokens, temperature=0)[0, prompt.shape[1]:].tolist()
        answers.append(ByteTokenizer().decode(new[: new.index(0)] if 0 in new else new))
    return answers


def test_accuracy_equals_hand_computation_run_dir_and_hf_export(base_run, tmp_path, capsys):  # noqa: F811
    from xlstm_lm.hf.export import export_checkpoint

    items = rows()
    data = write(tmp_path / "mixed.jsonl", items)
    model = load_model(Path(base_run) / "checkpoints" / "step_0000100")
    refs = [r["messages"][-1]["content"] if "messages" in r else r["response"] for r in items]
    # the longest reference ("  <word>\n") has 6 tokens: the default max_new_tokens is 6 + 16
    hand = hand_answers(model, items, max_new_tokens=22)
    correct = [a.strip() == ref.strip() for a, ref in zip(hand, refs)]
    assert 0 < sum(correct) < len(items)
    assert correct[:6] == [True] * 6 and correct[6:9] == [False] * 3 and correct[9:11] == [True, False]

    out = tmp_path / "run.json"
    assert cli.main([str(base_run), str(data), "--batch-size", "5", "--out", str(out), "--show", "2"]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["max_new_tokens"] == 22 and res["chat_template"].startswith("plain (the run's data.sft.chat_template")
    assert [r["answer"] for r in res["rows"]] == hand
    assert [r["correct"] for r in res["rows"]] == correct
    assert res["correct"] == sum(correct) and res["accuracy"] == pytest.approx(sum(correct) / len(items))
    assert f"exact match {sum(correct)}/{len(items)}" in printed
    assert printed.count("prompt \"copy: ") == 2  # --show 2

    # the exported folder: the prompt comes from its chat template; same answers
    export_checkpoint(base_run, tmp_path / "hf")
    out_hf = tmp_path / "hf.json"
    assert cli.main([str(tmp_path / "hf"), str(data), "--limit", "9", "--out", str(out_hf), "--show", "0"]) == 0
    res_hf = json.loads(out_hf.read_text())
    assert res_hf["examples"] == 9 and res_hf["chat_template"] == "the folder's chat template"
    assert [r["answer"] for r in res_hf["rows"]] == hand[:9]
    assert res_hf["correct"] == sum(correct[:9])


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    # every check here happens before a model is loaded: the model path need not exist
    cases = {
        "missing": (tmp_path / "nope.jsonl", "is not a file"),
        "empty": (write(tmp_path / "empty.jsonl", []), "holds no examples"),
        "no fields": (write(tmp_path / "text.jsonl", [{"prompt": "a", "response": "b"}, {"text": "x"}]),
                      "row 2: needs 'prompt' and 'response' fields or a 'messages' list"),
        "no response": (write(tmp_path / "half.jsonl", [{"prompt": "a"}]), "row 1: a prompt_response row needs"),
        "no assistant": (write(tmp_path / "user.jsonl", [{"messages": [{"role": "user", "content": "a"}]}]),
                         "no assistant message"),
        "answer first": (write(tmp_path / "first.jsonl", [{"messages": [{"role": "assistant", "content": "a"}]}]),
                         "no prompt before the reference"),
        "not json": (tmp_path / "bad.jsonl", "not valid JSON"),
    }
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": \n')
    for name, (path, message) in cases.items():
        assert cli.main([str(tmp_path / "no_model"), str(path)]) == 2, name
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: "), (name, err)
    good = write(tmp_path / "good.jsonl", [{"prompt": "a", "response": "b"}])
    assert cli.main([str(tmp_path / "no_model"), str(good)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([str(tmp_path / "no_model"), str(good), "--max-new-tokens", "0"])
    # a LoRA checkpoint (adapters not merged): told to merge it first
    lora = tmp_path / "lora_ckpt"
    lora.mkdir()
    (lora / "model.safetensors").write_bytes(b"")
    (lora / "config.yaml").write_text("model: {d_model: 64}\ntrain: {lora: {r: 8}}\n")
    assert cli.main([str(lora), str(good)]) == 2
    assert "is a LoRA checkpoint (train.lora): merge its adapters first" in capsys.readouterr().err
