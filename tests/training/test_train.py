"""The training job end to end: smoke run, exact resume, Ctrl-C, divergence, CLI errors.

Every run uses configs/tiny.yaml shrunk further (d_model 32, two blocks, seq_len 32)
on a small slice of the built-in corpus, on CPU in float32.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xlstm_lm.config_utils import ConfigError, apply_overrides, load_yaml
from xlstm_lm.models import XLSTMLM
from xlstm_lm.training import TrainingDiverged, train
from xlstm_lm.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint_config
from xlstm_lm.training.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
SHRINK = [
    "model.d_model=32",
    "model.num_blocks=2",
    "model.pattern=ms",
    "train.max_steps=10",
    "train.batch_size=4",
    "train.seq_len=32",
    "train.lr=3e-3",
    "train.min_lr=3e-4",
    "train.warmup_steps=2",
    "train.eval_every=5",
    "train.eval_batches=2",
    "train.log_every=1",
    "train.save_every=5",
    "train.keep_last=2",
    "train.sample_tokens=16",
    "train.device=cpu",
    "train.dtype=float32",
    "data.max_bytes=60000",
]


def tiny_raw(run_dir: Path, *overrides: str) -> dict:
    raw = apply_overrides(load_yaml(TINY), [*SHRINK, *overrides])
    raw["train"]["run_dir"] = str(run_dir)
    return raw


def metrics(run_dir: Path, split: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split and "kind" not in r]


def hooked_model(on_train_forward):
    """Model factory whose training forwards call ``on_train_forward(call_index, output)``."""

    def factory(cfg):
        model = XLSTMLM(cfg)
        calls = [0]

        def hook(module, args, kwargs, output):
            if module.training:
                calls[0] += 1
                on_train_forward(calls[0], output)

        model.register_forward_hook(hook, with_kwargs=True)
        return model

    return factory


def test_train_smoke(tmp_path):
    result = train(tiny_raw(tmp_path, "train.max_steps=20", "train.eval_every=10"), progress=False)
    losses = result.train_losses
    assert result.step == 20 and len(losses) == 20 and all(map(math.isfinite, losses))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert result.val_loss < math.log(256) and result.val_ppl == pytest.approx(math.exp(result.val_loss))
    assert 1 < result.unigram_ppl < 256
    # Checkpoints: keep_last=2 of steps 5..20; latest is the final one and complete.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000015", "step_0000020"]
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt == result.checkpoint and ckpt.name == "step_0000020"
    for name in ("model.safetensors", "trainer_state.pt", "config.yaml", "tokenizer/tokenizer.json"):
        assert (ckpt / name).is_file(), name
    assert load_checkpoint_config(ckpt)["model"]["d_model"] == 32
    assert [r["step"] for r in metrics(tmp_path, "train")] == list(range(1, 21))
    assert [r["step"] for r in metrics(tmp_path, "val")] == [10, 20]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["kind"] == "unigram_baseline"
    assert isinstance(result.sample, str) and result.sample.startswith("def ") and len(result.sample) > 4


def test_resume_is_bit_exact(tmp_path):
    # Dropout makes the result depend on the restored global RNG, not only the data generator.
    overrides = ("model.dropout=0.1",)
    full = train(tiny_raw(tmp_path / "full", *overrides), progress=False)
    first = train(tiny_raw(tmp_path / "split", *overrides), progress=False, stop_at_step=5)
    assert first.interrupted and first.step == 5 and latest_checkpoint(tmp_path / "split").name == "step_0000005"
    rest = train(tiny_raw(tmp_path / "split", *overrides), resume=True, progress=False)
    assert first.train_losses + rest.train_losses == full.train_losses
    assert rest.val_loss == full.val_loss
    # metrics.jsonl of the resumed run matches too (throughput aside).
    def logged(run):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in metrics(tmp_path / run, "train")]

    assert logged("split") == logged("full")
    a = load_file(str(latest_checkpoint(tmp_path / "full") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "split") / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_saves_a_checkpoint(tmp_path):
    def interrupt(call, output):
        if call == 3:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(tiny_raw(tmp_path), progress=False, model_factory=hooked_model(interrupt))
    assert result.interrupted and result.step == 3
    assert latest_checkpoint(tmp_path).name == "step_0000003"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def poison(call, output):
        if call == 8:
            output.loss = output.loss * float("nan")

    # One bad step is skipped (test_faults); with max_bad_steps=1 it stops the run.
    with pytest.raises(TrainingDiverged, match=r"step 8: loss is nan; .*the last good checkpoint is .*step_0000005"):
        train(tiny_raw(tmp_path, "train.max_bad_steps=1"), progress=False, model_factory=hooked_model(poison))
    assert latest_checkpoint(tmp_path).name == "step_0000005"


def test_resume_refuses_another_model_config(tmp_path):
    train(tiny_raw(tmp_path, "train.max_steps=2", "train.sample_tokens=0"), progress=False)
    with pytest.raises(ConfigError, match=r"already holds checkpoints.*--resume"):
        train(tiny_raw(tmp_path, "train.max_steps=2"), progress=False)
    with pytest.raises(ConfigError, match=r"cannot resume .*model.d_model: 32 != 48"):
        train(tiny_raw(tmp_path, "train.max_steps=4", "model.d_model=48"), resume=True, progress=False)


def test_cli_user_file_sentencepiece_and_resume_from_saved_config(tmp_path, capsys):
    text = "".join(f"line {i}: the value of x{i % 7} is {i * 31 % 97}.\n" for i in range(1500))
    (tmp_path / "corpus.txt").write_text(text)
    run_dir = tmp_path / "run"
    common = ["--run-dir", str(run_dir), "data.tokenizer=sentencepiece", "data.sp_vocab_size=400"]
    argv = ["--config", str(TINY), "--data", str(tmp_path / "corpus.txt"), *common, *SHRINK, "train.max_steps=3"]
    assert main(argv) == 0
    saved = load_checkpoint_config(latest_checkpoint(run_dir))
    # vocab_size 256 in tiny.yaml is the default, so it follows the tokenizer.
    vocab = json.loads((latest_checkpoint(run_dir) / "tokenizer" / "tokenizer.json").read_text())
    assert vocab["kind"] == "sentencepiece" and 256 < saved["model"]["vocab_size"] <= 400
    assert saved["data"]["path"] == str(tmp_path / "corpus.txt")
    # No --config: the run's own saved config is used, plus overrides.
    assert main(["--run-dir", str(run_dir), "--resume", "train.max_steps=5"]) == 0
    assert latest_checkpoint(run_dir).name == "step_0000005"
    assert "resumed from" in capsys.readouterr().out


def test_bfloat16_autocast_runs(tmp_path):
    result = train(tiny_raw(tmp_path, "train.max_steps=2", "train.dtype=bfloat16", "train.sample_tokens=4"), progress=False)
    assert all(map(math.isfinite, result.train_losses)) and math.isfinite(result.val_loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_run_and_resume(tmp_path):
    raw = tiny_raw(tmp_path, "train.device=cuda", "train.dtype=bfloat16", "train.sample_tokens=8")
    first = train(raw, progress=False, stop_at_step=5)
    rest = train(raw, resume=True, progress=False)
    assert first.step == 5 and rest.step == 10
    assert all(map(math.isfinite, first.train_losses + rest.train_losses)) and isinstance(rest.sample, str)


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(["--data", "{tmp}/missing.txt"], "data path .*missing.txt does not exist", id="missing-data"),
        pytest.param(["--data", "{tmp}/empty.txt"], r"holds no text \(0 bytes\)", id="empty-file"),
        pytest.param(["train.bogus=1"], "unknown config key train.bogus for TrainConfig", id="unknown-key"),
        pytest.param(["model.vocab_size=100"], r"model.vocab_size=100 is smaller .* 256 tokens.*model.vocab_size=256", id="vocab-too-small"),
        pytest.param(["train.seq_len=0"], "train.seq_len must be positive, got 0", id="seq_len-0"),
        pytest.param(["train.seq_len=4096"], r"validation split has \d+ tokens but one window needs .* 4097", id="val-too-short"),
        pytest.param(["train.lr"], "must look like key.sub=value", id="malformed-override"),
    ],
)
def test_cli_errors_are_clear(tmp_path, capsys, args, message):
    (tmp_path / "empty.txt").write_text("")
    argv = ["--config", str(TINY), "--run-dir", str(tmp_path / "run"), *SHRINK, *[a.format(tmp=tmp_path) for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err


def test_train_py_help():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--resume" in out.stdout and "key=value" in out.stdout
