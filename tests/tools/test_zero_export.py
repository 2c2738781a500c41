"""A ZeRO-3 checkpoint becomes one consolidated model and then a Hugging Face folder.

Two CPU ranks (gloo) run the DeepSpeed loop with ZeRO-3 on sentencepiece token shards
(tests/tools/zero_worker.py), and save the trained engine's logits on fixed ids. Then
tools/zero_to_model.py gathers the partitions into a checkpoint folder, tools/export_hf.py
exports it (and, in one step, the run dir itself), and ``AutoModelForCausalLM`` /
``AutoTokenizer`` of the exports give the engine's logits and the run's token ids.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

from tests.helpers import assert_close  # noqa: E402
from xlstm_lm.data.shards import write_shards  # noqa: E402
from xlstm_lm.data.tokenizers import SentencePieceTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("zero_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
DOCS = [f"doc {i} " + "abc def ghi " * (i % 9 + 1) for i in range(300)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory) -> Path:
    """tmp/run: a 2-rank ZeRO-3 run (2 steps) on tmp/shards (relative path in its config);
    tmp/logits.pt: the engine's logits on tmp/ids.pt."""
    tmp = tmp_path_factory.mktemp("zero3")
    tok = SentencePieceTokenizer.train(DOCS, vocab_size=300)
    write_shards(DOCS, tok, tmp / "shards")
    torch.save(torch.randint(0, tok.vocab_size, (2, 19), generator=torch.Generator().manual_seed(0)), tmp / "ids.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(WORKER), "shards", "run", "ids.pt", "logits.pt"]
    proc = subprocess.run(cmd, cwd=tmp, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    partitions = list((tmp / "run" / "deepspeed" / "step_0000002").glob("*model_states.pt"))
    assert len(partitions) == 2, "one partition per rank"
    return tmp


def test_zero3_run_to_consolidated_model_to_hf_folder(zero3_run, tmp_path, monkeypatch):
    from safetensors.torch import load_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tools.export_hf import main as export_hf
    from tools.zero_to_model import main as zero_to_model
    from xlstm_lm.data.tokenizers import load_tokenizer
    from xlstm_lm.evaluation import load_scorer
    from xlstm_lm.hf.export import load_checkpoint_as_hf

    tmp = zero3_run
    monkeypatch.chdir(tmp)
    ids, engine_logits = torch.load(tmp / "ids.pt"), torch.load(tmp / "logits.pt")
    sp = load_tokenizer(tmp / "shards" / "tokenizer")
    # export and evaluation read the safetensors copy the loop saved, never DeepSpeed's pickles
    assert (tmp / "run" / "deepspeed" / "step_0000002" / "model.safetensors").is_file()
    import deepspeed.utils.zero_to_fp32 as zero_to_fp32

    def no_pickles(*args, **kwargs):
        raise AssertionError("DeepSpeed's pickled partitions were loaded to read weights")

    monkeypatch.setattr(zero_to_fp32, "get_fp32_state_dict_from_zero_checkpoint", no_pickles)

    # 1. ZeRO-3 partitions -> one checkpoint folder (model, config, the shards' tokenizer)
    assert zero_to_model(["run", str(tmp_path / "consolidated")]) == 0
    model, tokenizer, _, run_cfg = load_checkpoint_as_hf(tmp_path / "consolidated")
    assert tokenizer.fingerprint() == sp.fingerprint() and run_cfg["train"]["distributed"]["zero_stage"] == 3
    with torch.no_grad():
        # fp32 on CPU, the same modules as the engine's: equal up to summation order
        assert_close(model(ids).logits, engine_logits, rtol=1e-6, atol_floor=1e-6, msg="consolidated")

    # 2. -> a Hugging Face folder, loaded by transformers with the remote code
    assert export_hf([str(tmp_path / "consolidated"), str(tmp_path / "hf")]) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    with torch.no_grad():
        assert_close(hf(ids).logits, engine_logits, rtol=1e-6, atol_floor=1e-6, msg="exported")
    text = "doc 17 abc def ghi abc"
    assert hf_tok(text)["input_ids"] == sp.encode(text) and hf_tok.eos_token_id == sp.eos_id
    assert "token shards shards" in (tmp_path / "hf" / "README.md").read_text()

    # the weights-only form: one safetensors file with the model's parameter names
    assert zero_to_model(["run/deepspeed", str(tmp_path / "w.safetensors")]) == 0
    plain = type(model.model)(model.model.config)
    load_model(plain, str(tmp_path / "w.safetensors"))
    for (name, a), b in zip(model.model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name

    # 3. the run dir straight to HF (consolidated in memory), and evaluation of the run dir
    assert export_hf(["run", str(tmp_path / "hf-direct"), "--no-verify"]) == 0
    direct = AutoModelForCausalLM.from_pretrained(tmp_path / "hf-direct", trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, hf(ids).logits)
    scorer = load_scorer(tmp / "run")
    assert scorer.encode(text) == sp.encode(text)
    with torch.no_grad():
        assert torch.equal(scorer.forward(ids[:1], None)[0], hf(ids[:1]).logits[0])


def test_checkpoints_without_the_copy_are_read_from_the_partitions_with_a_note(zero3_run, tmp_path, capsys):
    from tools.zero_to_model import main as zero_to_model
    from xlstm_lm.hf.export import load_checkpoint_as_hf

    run = tmp_path / "run"
    shutil.copytree(zero3_run / "run", run)
    (run / "deepspeed" / "step_0000002" / "model.safetensors").unlink()  # as an older version saved it
    assert zero_to_model([str(run), str(tmp_path / "old"), "--tokenizer", str(zero3_run / "shards")]) == 0
    assert "unpickles them: only do this for runs you trust" in capsys.readouterr().out
    ids, engine_logits = torch.load(zero3_run / "ids.pt"), torch.load(zero3_run / "logits.pt")
    with torch.no_grad():
        model = load_checkpoint_as_hf(tmp_path / "old")[0]
        assert_close(model(ids).logits, engine_logits, rtol=1e-6, atol_floor=1e-6, msg="from partitions")


def test_missing_tokenizer_tag_and_source_give_clear_errors(zero3_run, tmp_path, monkeypatch, capsys):
    from tools.zero_to_model import main as zero_to_model

    tmp = zero3_run
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)  # its config names the relative data.shards 'shards': not found from here
    assert zero_to_model([str(run), str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "cannot find the tokenizer" in err and "data.shards='shards'" in err and "--tokenizer" in err
    assert not (tmp_path / "a").exists(), "nothing written before the tokenizer is found"
    bad_tag = ["--tag", "step_0000009", "--tokenizer", str(tmp / "shards")]
    assert zero_to_model([str(run), str(tmp_path / "b"), *bad_tag]) == 1
    assert "no checkpoint 'step_0000009' (found: step_0000002)" in capsys.readouterr().err
    assert zero_to_model([str(tmp / "shards"), str(tmp_path / "c")]) == 1
    assert "is not a DeepSpeed run" in capsys.readouterr().err
    # --tokenizer names the shards (or a tokenizer folder) where they moved
    assert zero_to_model([str(run), str(tmp_path / "d"), "--tokenizer", str(tmp / "shards")]) == 0
    assert (tmp_path / "d" / "tokenizer" / "sentencepiece.model").is_file()
