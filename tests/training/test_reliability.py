"""Reliability of the command line (issue 12): one run per run dir, no foreign code,
--resume that cannot silently start over, one-line errors instead of tracebacks, no
leftovers from killed saves, strict JSON metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.hf import REPO, tiny_hf_model
from tests.training.test_train import SHRINK
from xlstm_lm.config_utils import ConfigError
from xlstm_lm.data.tokenizers import ByteTokenizer
from xlstm_lm.evaluation import load_model
from xlstm_lm.hf.export import export_model
from xlstm_lm.training import cli
from xlstm_lm.training.rundir import LOCK_FILE, RunLock

TINY = [*SHRINK, "train.max_steps=2", "train.save_every=2", "train.eval_every=2", "train.sample_tokens=0"]


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("def f(x):\n    return x + 1\n" * 600)
    return path


def run(capsys, *argv) -> tuple[int, str]:
    """``train.py`` in this process: (exit code, stderr); stdout stays in ``run.out``."""
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    run.out = captured.out
    return code, captured.err.strip()


def test_a_second_run_in_the_same_run_dir_stops_at_once(tmp_path, text, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # another process holds the run dir
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from xlstm_lm.training.rundir import RunLock; RunLock({str(run_dir)!r}).acquire(); "
         "print('held', flush=True); import time; time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run(capsys, "--data", text, "--run-dir", run_dir, *TINY)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"in use by another run (pid {holder.pid} on" in err and "choose another --run-dir" in err
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died (SIGKILL): its lock is taken over, the run goes ahead
    code, err = run(capsys, "--data", text, "--run-dir", run_dir, *TINY)
    assert code == 0, err
    assert f"taking over the lock of a run that is gone (pid {holder.pid} on" in run.out
    assert (run_dir / LOCK_FILE).read_text() == ""  # released at the end
    # within one process too (flock is per open file): a held lock refuses a second run
    with RunLock(run_dir):
        code, err = run(capsys, "--resume", "--run-dir", run_dir, "train.max_steps=3")
    assert code == 2 and "in use by another run" in err


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, text, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "h", "started": "then", "command": "x"}) + "\n")
    code = cli.main([f"--data={text}", f"--run-dir={run_dir}", *TINY])
    out = capsys.readouterr().out
    assert code == 0 and "taking over the lock of a run that is gone (pid 999999 on h since then: x)" in out


def test_resume_needs_a_checkpoint_and_resume_or_new_starts_or_continues(tmp_path, text, capsys):
    code, err = run(capsys, "--resume", "--run-dir", tmp_path / "typo")
    assert code == 2 and "--resume: the run dir" in err and "does not exist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "typo").exists()
    (tmp_path / "empty").mkdir()
    code, err = run(capsys, "--resume", "--data", text, "--run-dir", tmp_path / "empty", *TINY)
    assert code == 2 and "holds no checkpoint" in err
    assert list((tmp_path / "empty").iterdir()) == []
    # --resume-or-new: starts where there is nothing, continues where there is a checkpoint
    code, _ = run(capsys, "--resume-or-new", "--data", text, "--run-dir", tmp_path / "sched", *TINY)
    assert code == 0 and (tmp_path / "sched" / "checkpoints" / "step_0000002").is_dir()
    code, err = run(capsys, "--resume-or-new", "--run-dir", tmp_path / "sched", "train.max_steps=4", "train.save_every=2")
    assert code == 0, err
    assert (tmp_path / "sched" / "checkpoints" / "step_0000004").is_dir()


def test_bad_paths_and_yaml_are_one_line_errors(tmp_path, text, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = run(capsys, "--data", text, "--run-dir", afile, *TINY)
    assert code == 2 and err == f"error: --run-dir {afile} is a file, not a folder; choose another --run-dir"

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: [64\n")
    code, err = run(capsys, "--config", bad)
    assert code == 2 and f"config file {bad} is not valid YAML" in err and "line 3" in err and len(err.splitlines()) == 1
    code, err = run(capsys, "--data", text, "train.betas=[0.9,")
    assert code == 2 and "override 'train.betas=[0.9,': the value of train.betas is not valid YAML" in err
    code, err = run(capsys, "--config", REPO / "configs")
    assert code == 2 and "is a folder; pass a YAML file" in err

    # a run dir this user cannot write (root ignores permissions, so the check is simulated)
    import xlstm_lm.training.rundir as rundir

    monkeypatch.setattr(rundir.os, "access", lambda path, mode: False)
    code, err = run(capsys, "--data", text, "--run-dir", tmp_path / "ro", *TINY)
    assert code == 2 and "is not writable by this user" in err and len(err.splitlines()) == 1


def test_a_write_failure_mid_run_is_one_line_and_keeps_earlier_checkpoints(tmp_path, text, capsys, monkeypatch):
    import xlstm_lm.training.trainer as trainer

    real = trainer.save_checkpoint
    calls = []

    def failing(run_dir, step, *args, **kwargs):
        calls.append(step)
        if step > 2:
            raise PermissionError(13, "Permission denied", str(run_dir / "checkpoints"))
        return real(run_dir, step, *args, **kwargs)

    monkeypatch.setattr(trainer, "save_checkpoint", failing)
    run_dir = tmp_path / "run"
    code, err = run(capsys, "--data", text, "--run-dir", run_dir, *TINY, "train.max_steps=4")
    assert code == 2 and err.splitlines()[-1].startswith(f"error: cannot write {run_dir / 'checkpoints'}: Permission denied")
    assert "continue with --resume" in err
    assert (run_dir / "checkpoints" / "step_0000002").is_dir()


def test_temporaries_of_a_killed_save_are_removed_at_the_next_start(tmp_path, text, capsys):
    run_dir = tmp_path / "run"
    assert cli.main([f"--data={text}", f"--run-dir={run_dir}", *TINY]) == 0
    leftovers = [run_dir / "checkpoints" / ".tmp_step_0000004_12345", run_dir / "checkpoints" / ".latest.tmp12345"]
    leftovers[0].mkdir()
    leftovers[1].write_text("step_0000004\n")
    assert cli.main([f"--run-dir={run_dir}", "--resume", "train.max_steps=3", "train.save_every=3"]) == 0
    assert not any(p.exists() for p in leftovers)


def test_metrics_are_strict_json_even_with_a_nan_loss(tmp_path):
    from xlstm_lm.training.monitor import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard=False)
    log.log(step=1, split="val", loss=float("nan"), ppl=float("inf"))
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "step": 1, "split": "val", "loss": None, "ppl": None}


def _evil_folder(path, marker, model_type="evil_lm", modeling="modeling_evil.py"):
    path.mkdir(parents=True, exist_ok=True)
    (path / modeling).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    cfg = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    cfg.update(model_type=model_type, auto_map={"AutoConfig": f"{modeling[:-3]}.EvilConfig",
                                                "AutoModelForCausalLM": f"{modeling[:-3]}.EvilModel"})
    (path / "config.json").write_text(json.dumps(cfg))


def test_foreign_code_runs_only_with_trust_remote_code(tmp_path, capsys):
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil"
    _evil_folder(evil, marker)
    with pytest.raises(ConfigError, match="model_type 'evil_lm'.*--trust-remote-code"):
        load_model(evil)
    assert not marker.exists()
    sys.path.insert(0, str(REPO / "eval"))
    try:
        import perplexity as eval_ppl

        assert eval_ppl.main([str(evil), "--text", str(REPO / "README.md")]) == 2
        assert "--trust-remote-code" in capsys.readouterr().err
        assert not marker.exists()
        # with consent transformers runs it (and then fails: the code defines no model)
        with pytest.raises(Exception):
            load_model(evil, trust_remote_code=True)
        assert marker.exists()
    finally:
        sys.path.remove(str(REPO / "eval"))

    # our own model type loads with the installed classes, not the .py files the folder carries
    ours = tmp_path / "ours"
    model = tiny_hf_model("ms", dtype=torch.float32, vocab_size=256)
    export_model(model, ByteTokenizer(), ours)
    marker.unlink()
    for name in ("modeling_xlstm_lm.py", "configuration_xlstm_lm.py"):
        (ours / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    loaded = load_model(ours)
    assert not marker.exists() and type(loaded.model).__module__ == "xlstm_lm.hf.modeling"
    ids = torch.randint(0, 256, (1, 9))
    assert torch.equal(loaded.model(ids).logits, model(ids).logits)


def test_divergence_leaves_a_checkpoint_training_can_continue_from(tmp_path, text, capsys):
    from xlstm_lm.training.checkpoint import latest_checkpoint, nonfinite_weights

    run_dir = tmp_path / "run"
    base = [*SHRINK, "train.sample_tokens=0", "train.save_every=2", "train.eval_every=2", "train.max_bad_steps=3"]
    code, err = run(capsys, "--data", text, "--run-dir", run_dir, *base, "train.max_steps=4")
    assert code == 0, err
    # the learning rate explodes: the run stops (exit 1) and writes no checkpoint after the damage
    code, err = run(capsys, "--resume", "--run-dir", run_dir, *base, "train.max_steps=20", "train.lr=1e6",
                    "train.min_lr=1e6", "train.warmup_steps=0")
    assert code == 1, err
    assert "diverged" in err and "the last good checkpoint is" in err
    # no advice to set what is already set (the tiny config clips at 1.0)
    assert "(train.grad_clip=1.0)" not in err and "tighter gradient clipping (train.grad_clip is 1.0)" in err
    newest = latest_checkpoint(run_dir, verify_weights=True)
    assert newest == latest_checkpoint(run_dir) and nonfinite_weights(newest) is None
    assert "checkpoint not written" in run.out
    # and --resume with a sane learning rate continues from it to a finite end
    code, err = run(capsys, "--resume", "--run-dir", run_dir, *base, "train.max_steps=8", "train.lr=1e-3",
                    "train.min_lr=1e-4")
    assert code == 0, err
    val = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert val[-1]["split"] == "val" and val[-1]["loss"] is not None and val[-1]["step"] == 8


def test_damaged_but_readable_weights_are_not_trained_from(tmp_path, text, capsys):
    from xlstm_lm.training.checkpoint import CheckpointError, load_checkpoint_weights
    from xlstm_lm.models import XLSTMLM

    run_dir = tmp_path / "run"
    code, err = run(capsys, "--data", text, "--run-dir", run_dir, *TINY, "train.max_steps=4")
    assert code == 0, err
    weights = run_dir / "checkpoints" / "step_0000004" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    mid = len(raw) // 2
    raw[mid: mid + 4096] = b"\xff" * 4096  # readable file, NaN values
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="NaN/Inf weights"):
        from xlstm_lm.config import ModelConfig
        from xlstm_lm.config_utils import from_dict
        from xlstm_lm.training.checkpoint import load_checkpoint_config

        cfg = from_dict(ModelConfig, load_checkpoint_config(weights.parent)["model"], "model")
        load_checkpoint_weights(XLSTMLM(cfg), weights.parent)
    # the resume falls back to the newest usable checkpoint, with a warning, and ends finite
    with pytest.warns(UserWarning, match="step_0000004, which is unusable.*NaN/Inf.*falling back to step_0000002") as seen:
        code, err = run(capsys, "--resume", "--run-dir", run_dir, "train.max_steps=6")
    assert code == 0, err
    assert len([w for w in seen if "falling back" in str(w.message)]) == 1, "the fallback is reported once"
    assert "resumed from" in run.out and "step_0000002" in run.out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["split"] == "val" and records[-1]["loss"] is not None


def test_run_health_thresholds_and_state():
    from xlstm_lm.training.faults import RunHealth

    h = RunHealth()
    for loss in (5.0, 4.0, 3.0, 3.2, 2.9):
        h.update(loss)
    assert h.problem() is None
    h.observe_val(float("nan"))
    assert "validation loss is nan" in h.problem()
    h.observe_val(3.0)
    h.update(float("inf"))
    assert "training loss is inf" in h.problem()
    for _ in range(5):
        h.update(40.0)  # the running mean climbs far above its best
    assert "is diverging" in h.problem()
    again = RunHealth()
    again.load_state_dict(h.state_dict())
    assert (again.ema, again.best) == (h.ema, h.best)


def test_an_unreachable_hub_tokenizer_fails_at_once(monkeypatch):
    import huggingface_hub

    from xlstm_lm.data.corpus import DataError
    from xlstm_lm.data.tokenizers import HFTokenizer

    calls = []

    def unreachable(self, name, timeout=None, **kwargs):
        calls.append(timeout)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    with pytest.raises(DataError, match="not cached, and the Hub cannot provide it.*ConnectionError.*local folder"):
        HFTokenizer("someone/not-cached-tokenizer")
    assert calls == [10]


def test_eval_names_its_own_flag_for_an_empty_text_folder(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "eval"))
    try:
        import perplexity as eval_ppl

        (tmp_path / "empty").mkdir()
        assert eval_ppl.main([str(tmp_path), "--text", str(tmp_path / "empty")]) == 2
    finally:
        sys.path.remove(str(REPO / "eval"))
    err = capsys.readouterr().err
    assert "holds no text files" in err and "pass a single file with --text" in err and "--data" not in err


def test_init_from_an_hf_folder_runs_none_of_its_code(tmp_path):
    from xlstm_lm.training.init_from import resolve_init_source

    marker = tmp_path / "ran.txt"
    folder = tmp_path / "hf"
    export_model(tiny_hf_model("ms", dtype=torch.float32, vocab_size=256), ByteTokenizer(), folder)
    (folder / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    tok_cfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    source = resolve_init_source(folder)
    assert source.kind == "hf" and not marker.exists()
    _evil_folder(tmp_path / "evil", marker)
    with pytest.raises(ConfigError, match="model_type 'evil_lm'"):
        resolve_init_source(tmp_path / "evil")
    assert not marker.exists()
