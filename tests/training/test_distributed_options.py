"""The DeepSpeed loop in one CPU process: run options (activation checkpointing gives the
same losses, bf16 trains, fp16 is a clear config error where the CPU lacks it), NaN/Inf
skipping on ZeRO-0 in fp32 (checked by the loop itself, DeepSpeed does not), and
``python train.py data.shards=... train.distributed.enabled=true`` (this loop without a launcher).

The ds_worker runs share one plain-python launch (the module fixture).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("deepspeed")

from tests.training.test_distributed import ROOT, launch_runs, trace  # noqa: E402
from tests.training.test_distributed_finetune import MODEL  # noqa: E402
from xlstm_lm.config import ModelConfig  # noqa: E402
from xlstm_lm.config_utils import from_dict, to_dict  # noqa: E402
from xlstm_lm.data.shards import PackedLoader, TokenShards, write_shards  # noqa: E402
from xlstm_lm.data.tokenizers import ByteTokenizer  # noqa: E402
from xlstm_lm.models import XLSTMLM  # noqa: E402
from xlstm_lm.training.checkpoint import save_checkpoint  # noqa: E402
from xlstm_lm.training.cli import build_parser, load_raw_config  # noqa: E402

DOCS = [f"doc {i} " + "abc def " * (i % 9 + 1) for i in range(300)]


def _distributed(**options) -> dict:
    return {"train": {"distributed": options}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    write_shards(DOCS, ByteTokenizer(), root / "shards")
    launch_runs(root, [
        {"name": "plain"},
        {"name": "keep", "overrides": {"train": {"max_steps": 4, "save_every": 1, "keep_last": 2}}},
        {"name": "ckpt", "overrides": _distributed(activation_checkpointing=True)},
        {"name": "bf16", "overrides": _distributed(precision="bf16")},
        {"name": "bf16-z2", "overrides": _distributed(precision="bf16", zero_stage=2)},
        {"name": "fp16", "overrides": _distributed(precision="fp16")},
        # ZeRO-0 fp32, grad_accum 2: NaN loss in step 2's first micro step, Inf gradient in step 3's last
        {"name": "nan", "overrides": {"train": {"max_steps": 4, "distributed": {"grad_accum": 2}}},
         "poison": [{"rank": 0, "calls": [3], "kind": "loss"}, {"rank": 0, "calls": [6], "kind": "grad"}]},
    ], root / "shards", nproc=0)
    return root


def test_keep_last_prunes_deepspeed_checkpoints(runs):
    ckpt_dir = runs / "keep" / "deepspeed"
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir()) == ["step_0000003", "step_0000004"]
    assert (ckpt_dir / "latest").read_text().strip() == "step_0000004"


def test_activation_checkpointing_gives_the_same_losses(runs):
    plain, ckpt = trace(runs, 0, "plain")["losses"], trace(runs, 0, "ckpt")["losses"]
    assert len(plain) == 3 and ckpt == pytest.approx(plain, rel=1e-6, abs=0)


def test_bf16_trains_on_the_cpu_accelerator(runs):
    for name in ("bf16", "bf16-z2"):
        losses = trace(runs, 0, name)["losses"]
        assert len(losses) == 3 and all(map(math.isfinite, losses)) and losses[-1] < losses[0], name
        # bf16 rounding: close to, not equal to, the fp32 losses
        assert losses[0] == pytest.approx(trace(runs, 0, "plain")["losses"][0], rel=1e-2)


def test_fp16_without_cpu_support_is_a_clear_config_error(runs):
    # DeepSpeed's CPU accelerator has fp16 only where oneDNN has fp16 kernels (not on most CPUs)
    t = trace(runs, 0, "fp16")
    if t["error"] is None:
        assert len(t["losses"]) == 3 and all(map(math.isfinite, t["losses"]))
    else:
        assert t["error"] == ("ConfigError: train.distributed.precision=fp16 is not supported by DeepSpeed's cpu "
                              "accelerator on this machine; use one of: fp32, bf16")


def test_nan_and_inf_steps_are_skipped_with_zero0_fp32(runs):
    t = trace(runs, 0, "nan")
    assert math.isnan(t["losses"][1]) and all(math.isfinite(x) for i, x in enumerate(t["losses"]) if i != 1)
    before = t["hashes"][0::2]
    assert before[0] != before[1] == before[2] == before[3] != t["final_hash"]
    assert (t["adam_steps"], t["skipped_steps"], t["global_steps"], t["micro_steps"]) == (2, 2, 4, 8)
    records = [json.loads(line) for line in (runs / "nan" / "losses.jsonl").read_text().splitlines()]
    assert [r.get("what") for r in records] == [None, "loss is nan (not finite in 1 of 2 micro batches over 1 ranks)",
                                                "gradient norm is not finite", None]


@torch.no_grad()
def test_train_py_with_shards_runs_the_deepspeed_loop_in_one_process(tmp_path):
    """No launcher, train.distributed.enabled: the DeepSpeed loop in one process on shards;
    --init-from continues pretraining from a checkpoint; --resume finds the run's config."""
    write_shards(DOCS, ByteTokenizer(), tmp_path / "shards")
    torch.manual_seed(123)
    source = XLSTMLM(from_dict(ModelConfig, MODEL)).eval()
    save_checkpoint(tmp_path / "source", 0, source, {}, {"model": to_dict(source.config)}, ByteTokenizer(), 1)
    run = tmp_path / "run"
    args = ["--init-from", str(tmp_path / "source"), "--run-dir", str(run), f"data.shards={tmp_path / 'shards'}",
            "train.max_steps=2", "train.batch_size=4", "train.seq_len=16", "train.eval_batches=1", "train.log_every=1",
            "train.warmup_steps=0", "train.sample_tokens=12", "train.sample_prompt=doc", "train.distributed.enabled=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run / "deepspeed" / "latest").read_text().strip() == "step_0000002"
    assert f"init-from: weights of checkpoint {tmp_path / 'source' / 'checkpoints' / 'step_0000000'}" in proc.stdout
    # the end-of-run sample, as in the single-process loop (train.sample_* are not ignored)
    assert "--- sample (12 tokens from 'doc') ---\ndoc" in proc.stdout
    batch = PackedLoader(TokenShards.open(tmp_path / "shards"), 16, 4, 0).next_batch()
    expected = source(batch.input_ids, labels=batch.labels, reset=batch.reset).loss.item()
    first = json.loads((run / "losses.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["loss"] == pytest.approx(expected, rel=1e-6)
    # --resume of a DeepSpeed run: its config.json (not the default tiny.yaml) plus the overrides
    raw = load_raw_config(build_parser().parse_args(["--run-dir", str(run), "--resume", "train.max_steps=3"]),
                          ROOT / "configs" / "tiny.yaml")
    assert raw["model"]["d_model"] == 32 and raw["train"]["max_steps"] == 3
    assert raw["data"]["shards"] == str(tmp_path / "shards") and raw["train"]["init_from"] == str(tmp_path / "source")


def test_settings_of_the_other_loop_are_refused_by_name(tmp_path, capsys):
    from xlstm_lm.training.cli import main

    write_shards(DOCS, ByteTokenizer(), tmp_path / "shards")
    text = tmp_path / "text.txt"
    text.write_text("abc def " * 2000)
    # one process on text: train.distributed.* would be ignored
    assert main(["--data", str(text), "--run-dir", str(tmp_path / "a"), "train.distributed.zero_stage=2"]) == 2
    err = capsys.readouterr().err
    assert "train.distributed is set (train.distributed.zero_stage: 0 != 2)" in err and "train.distributed.enabled=true" in err
    # the DeepSpeed loop: its precision knob is train.distributed.precision
    assert main(["--run-dir", str(tmp_path / "b"), f"data.shards={tmp_path / 'shards'}", "train.distributed.enabled=true",
                 "train.dtype=bfloat16"]) == 2
    assert "set train.distributed.precision=bf16" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["--run-dir", str(tmp_path / "c"), f"data.shards={tmp_path / 'shards'}", "train.distributed.enabled=true",
                     "train.device=cuda"]) == 2
        assert "no CUDA device is visible" in capsys.readouterr().err
