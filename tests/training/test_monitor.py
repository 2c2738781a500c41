"""Where a run's metrics go besides metrics.jsonl: TensorBoard event files (read back,
equal to the JSONL, also across a resume), wandb (a fake module records the calls;
without wandb the run stops before training), and run_dir/metrics.png at the end."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from tests.training.test_train import TINY, hooked_model, tiny_raw
from xlstm_lm.config_utils import ConfigError
from xlstm_lm.training import train
from xlstm_lm.training.cli import main
from xlstm_lm.training.monitor import MetricsLog

# 6 steps, evaluated and saved at 3 and 6, no end-of-run sample
SHORT = ("train.max_steps=6", "train.eval_every=3", "train.save_every=3", "train.sample_tokens=0")


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _expected_scalars(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)]: numbers of each record under split/key, or split/kind/key."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        prefix = f"{r['split']}/{r['kind']}/" if "kind" in r else f"{r['split']}/"
        for key, value in r.items():
            if key not in ("step", "split", "kind") and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(prefix + key, []).append((r["step"], float(value)))
    return out


def _tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
        # event files store float32
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]], rel=1e-6), tag


def test_tensorboard_scalars_equal_metrics_jsonl_and_png_written(tmp_path):
    train(tiny_raw(tmp_path, *SHORT), progress=False)
    records = _records(tmp_path)
    want = _expected_scalars(records)
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss", "val/ppl",
            "val/unigram_baseline/ppl"} <= set(want)
    assert [s for s, _ in want["train/loss"]] == [1, 2, 3, 4, 5, 6] and [s for s, _ in want["val/loss"]] == [3, 6]
    _assert_same(_tensorboard_scalars(tmp_path / "tensorboard"), want)
    png = tmp_path / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_tensorboard_after_resume_equals_metrics_jsonl(tmp_path):
    def crash(call, output):
        if call == 4:
            raise RuntimeError("crash in step 4")

    # checkpoint at 2, records of step 3 (train and val) written, then the process dies
    raw = tiny_raw(tmp_path, *SHORT, "train.save_every=2")
    with pytest.raises(RuntimeError, match="crash in step 4"):
        train(raw, progress=False, model_factory=hooked_model(crash))
    assert [r["step"] for r in _records(tmp_path)][-2:] == [3, 3]
    # the resume redoes step 3: metrics.jsonl drops its records, TensorBoard purges its events
    train(raw, resume=True, progress=False)
    records = _records(tmp_path)
    assert [r["step"] for r in records if r["split"] == "val" and "kind" not in r] == [3, 6]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    _assert_same(_tensorboard_scalars(tmp_path / "tensorboard"), _expected_scalars(records))


class _FakeWandb(types.ModuleType):
    """Stands in for the wandb package: records init, log and finish."""

    def __init__(self):
        super().__init__("wandb")
        self.calls: list[tuple] = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        fake = self

        class Run:
            def log(self, data, step=None):
                fake.calls.append(("log", dict(data), step))

            def finish(self):
                fake.calls.append(("finish",))

        return Run()


def test_wandb_gets_the_same_records(tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train(tiny_raw(tmp_path, *SHORT, "train.wandb_project=xlstm-test", "train.tensorboard=false"), progress=False)
    (init, kwargs), *logs, finish = fake.calls
    assert init == "init" and finish == ("finish",)
    assert kwargs["project"] == "xlstm-test" and kwargs["name"] == tmp_path.name and kwargs["dir"] == str(tmp_path)
    assert kwargs["config"]["model"]["d_model"] == 32 and kwargs["config"]["train"]["wandb_project"] == "xlstm-test"
    # one wandb.log per metrics.jsonl record, same step, same numbers under the TensorBoard names
    records = _records(tmp_path)
    assert len(logs) == len(records)
    for (what, data, step), record in zip(logs, records):
        assert what == "log" and step == record["step"]
        assert {k: [(step, v)] for k, v in data.items()} == _expected_scalars([record])
    assert not (tmp_path / "tensorboard").exists()  # train.tensorboard=false
    assert (tmp_path / "metrics.png").is_file()


def test_wandb_missing_stops_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    raw = tiny_raw(tmp_path / "run", *SHORT, "train.wandb_project=xlstm-test")
    with pytest.raises(ConfigError, match=r"train.wandb_project is set but wandb cannot be imported .*pip install wandb"):
        train(raw, progress=False)
    assert not (tmp_path / "run").exists()  # nothing written: no tokenizer, metrics or checkpoint
    argv = ["--config", str(TINY), "--run-dir", str(tmp_path / "run"), *SHORT, "train.wandb_project=xlstm-test"]
    assert main(argv) == 2
    assert "pip install wandb" in capsys.readouterr().err


def test_missing_matplotlib_skips_the_plot_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard=False)
    log.log(step=1, split="train", loss=5.0)
    log.log(step=1, split="val", loss=4.5, ppl=90.0)
    log.close()
    log.close()  # idempotent
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [out[0]] and "metrics.png not written: matplotlib is not installed" in out[0]
    assert not (tmp_path / "metrics.png").exists()
