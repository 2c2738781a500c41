"""Faults of the single-process trainer: SIGTERM, SIGKILL + resume, damaged checkpoints,
NaN/Inf steps, CUDA out-of-memory advice. Tiny model on CPU in float32 (see test_train)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.test_train import REPO, hooked_model, metrics, tiny_raw
from xlstm_lm.training import TrainingDiverged, train
from xlstm_lm.training.checkpoint import checkpoint_problem, latest_checkpoint, list_checkpoints
from xlstm_lm.training.faults import oom_message


def test_sigterm_saves_a_checkpoint_and_returns(tmp_path):
    def terminate(call, output):
        if call == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    result = train(tiny_raw(tmp_path), progress=False, model_factory=hooked_model(terminate))
    assert result.interrupted and result.step == 3
    assert latest_checkpoint(tmp_path).name == "step_0000003"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handler is removed after the loop"


def test_sigkill_between_checkpoints_then_resume_is_bit_exact(tmp_path):
    overrides = ("model.dropout=0.1", "train.sample_tokens=0")
    full = train(tiny_raw(tmp_path / "full", *overrides), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # Killed in step 8: checkpoint 5 exists, steps 6-7 were logged and are lost work.
    proc = subprocess.run([sys.executable, str(REPO / "tests/training/kill_worker.py"), str(tmp_path / "killed"), "8"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert latest_checkpoint(tmp_path / "killed").name == "step_0000005"
    assert [r["step"] for r in metrics(tmp_path / "killed", "train")] == list(range(1, 8))
    rest = train(tiny_raw(tmp_path / "killed", *overrides), resume=True, progress=False)
    assert rest.train_losses == full.train_losses[5:]
    # Per-step losses of the whole killed-and-resumed run, as logged, equal the uninterrupted run's.
    assert [r["loss"] for r in metrics(tmp_path / "killed", "train")] == [r["loss"] for r in metrics(tmp_path / "full", "train")]
    assert rest.val_loss == full.val_loss


def _two_checkpoints(run_dir: Path) -> None:
    train(tiny_raw(run_dir, "train.sample_tokens=0"), progress=False)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_0000005", "step_0000010"]


@pytest.mark.parametrize(
    "damage, problem",
    [
        pytest.param(lambda p: os.truncate(p / "model.safetensors", (p / "model.safetensors").stat().st_size // 2),
                     "model.safetensors is truncated", id="truncated-weights"),
        pytest.param(lambda p: os.truncate(p / "model.safetensors", 5), "model.safetensors is unreadable", id="cut-header"),
        pytest.param(lambda p: (p / "trainer_state.pt").unlink(), "trainer_state.pt is missing", id="missing-state"),
        pytest.param(lambda p: os.truncate(p / "trainer_state.pt", 100), "trainer_state.pt is unreadable", id="truncated-state"),
        pytest.param(lambda p: (p / "config.yaml").unlink(), "config.yaml is missing", id="missing-config"),
    ],
)
def test_damaged_latest_falls_back_to_the_previous_checkpoint(tmp_path, damage, problem):
    _two_checkpoints(tmp_path)
    damage(tmp_path / "checkpoints" / "step_0000010")
    assert problem in checkpoint_problem(tmp_path / "checkpoints" / "step_0000010")
    with pytest.warns(UserWarning, match=f"step_0000010, which is unusable: {problem}.*falling back to step_0000005"):
        assert latest_checkpoint(tmp_path).name == "step_0000005"
    with pytest.warns(UserWarning, match="falling back"):
        result = train(tiny_raw(tmp_path, "train.sample_tokens=0"), resume=True, progress=False)
    assert len(result.train_losses) == 5 and latest_checkpoint(tmp_path).name == "step_0000010"
    assert checkpoint_problem(latest_checkpoint(tmp_path)) is None


def test_missing_pointer_and_no_complete_checkpoint(tmp_path):
    _two_checkpoints(tmp_path)
    (tmp_path / "checkpoints" / "latest").unlink()
    with pytest.warns(UserWarning, match="latest is missing; falling back to step_0000010"):
        assert latest_checkpoint(tmp_path).name == "step_0000010"
    for p in list_checkpoints(tmp_path):
        (p / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint is left"):
        latest_checkpoint(tmp_path)


def test_one_nan_step_is_skipped_and_logged(tmp_path):
    def poison(call, output):
        if call == 7:
            output.loss = output.loss * float("nan")

    result = train(tiny_raw(tmp_path, "train.sample_tokens=0"), progress=False, model_factory=hooked_model(poison))
    assert result.step == 10 and not result.interrupted
    assert math.isnan(result.train_losses[6]) and all(map(math.isfinite, result.train_losses[7:]))
    bad = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "bad_step" in line]
    assert bad == [{"step": 7, "split": "train", "kind": "bad_step", "what": "loss is nan", "consecutive": 1}]
    assert all(torch.isfinite(p).all() for p in torch.load(latest_checkpoint(tmp_path) / "trainer_state.pt",
                                                            weights_only=True)["optimizer"]["state"][0].values())


def test_nan_gradient_skips_the_step_without_touching_the_weights(tmp_path):
    snapshots = {}

    def poison(call, output):
        if call == 4:
            output.loss.register_hook(lambda g: g * float("inf"))

    def factory(cfg):
        model = hooked_model(poison)(cfg)

        def snapshot(module, args):
            if module.training:
                snapshots[len(snapshots)] = module.embedding.weight.detach().clone()

        model.register_forward_pre_hook(snapshot)
        return model

    result = train(tiny_raw(tmp_path, "train.sample_tokens=0", "train.max_steps=6"), progress=False, model_factory=factory)
    assert all(map(math.isfinite, result.train_losses))
    # Step 4's update was skipped: the weights before steps 4 and 5 are equal, and differ elsewhere.
    assert torch.equal(snapshots[3], snapshots[4]) and not torch.equal(snapshots[2], snapshots[3])
    assert "gradient norm is" in (tmp_path / "metrics.jsonl").read_text()


def test_consecutive_nan_steps_stop_with_advice_and_keep_the_good_checkpoint(tmp_path):
    def poison(call, output):
        if call >= 7:
            output.loss = output.loss * float("nan")

    with pytest.raises(TrainingDiverged, match=r"step 9: loss is nan; 3 consecutive bad steps \(train.max_bad_steps=3\)"
                                               r".*last good checkpoint is .*step_0000005.*lower train.lr.*grad_clip.*float32.*data"):
        train(tiny_raw(tmp_path, "train.max_bad_steps=3"), progress=False, model_factory=hooked_model(poison))
    assert latest_checkpoint(tmp_path).name == "step_0000005"


def test_oom_message_names_the_settings_to_lower():
    single = oom_message(batch_size=16, seq_len=2048, dtype="float32")
    for text in ("train.batch_size (now 16)", "train.seq_len (now 2048)", "train.dtype=bfloat16"):
        assert text in single
    assert "zero_stage" not in single and "activation_checkpointing" not in single
    ds = oom_message(batch_size=64, seq_len=8192, grad_accum=2, world_size=8, activation_checkpointing=False,
                     zero_stage=1, offload_optimizer=False, offload_params=False, dtype="bf16", memory="peak 77.0 GiB")
    assert ds.startswith("CUDA out of memory (peak 77.0 GiB)")
    for text in ("sequences per micro step (now 4)", "grad_accum (now 2)", "train.seq_len (now 8192)",
                 "activation_checkpointing=true", "zero_stage (now 1", "offload_optimizer=true"):
        assert text in ds, text
    assert "offload_params" not in ds and "bfloat16" not in ds
    z3 = oom_message(batch_size=8, seq_len=128, zero_stage=3, offload_params=False, activation_checkpointing=True)
    assert "offload_params=true" in z3 and "raise train.distributed.zero_stage" not in z3
    assert "activation_checkpointing" not in z3
