"""NaN/Inf steps in the DeepSpeed loop on two CPU ranks (gloo): a step whose loss (one
rank, one micro step) or gradient is not finite is skipped on both ranks with weights
and Adam state untouched; consecutive bad steps stop the run with the last good
checkpoint intact, and that checkpoint resumes. See training.distributed's docstring.

All runs share one two-rank launch (the module fixture); the tests read their traces.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

from tests.training.test_distributed import launch_runs, trace  # noqa: E402
from xlstm_lm.data.shards import write_shards  # noqa: E402
from xlstm_lm.data.tokenizers import ByteTokenizer  # noqa: E402
from xlstm_lm.training.config import TrainConfig  # noqa: E402
from xlstm_lm.training.optim import lr_at  # noqa: E402

DOCS = [f"doc {i} " + "abc def " * (i % 9 + 1) for i in range(300)]


def _poison(*items: tuple[int, list[int], str]) -> list[dict]:
    return [{"rank": r, "calls": calls, "kind": kind} for r, calls, kind in items]


def _zero(stage: int, accum: int = 1, **train) -> dict:
    return {"train": {**train, "distributed": {"zero_stage": stage, "grad_accum": accum}}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("faults")
    write_shards(DOCS, ByteTokenizer(), root / "shards")
    diverge = _zero(3, max_steps=6, save_every=2, max_bad_steps=2)
    proc = launch_runs(root, [
        # grad_accum 2: forward calls 2s-1 and 2s are step s. Step 2: NaN loss in rank 1's first
        # micro step. Step 3: finite losses, an infinite gradient from rank 0's boundary micro step.
        {"name": "skip", "overrides": _zero(2, 2, max_steps=4), "poison": _poison((1, [3], "loss"), (0, [6], "grad"))},
        # ZeRO-3, NaN losses from step 3 on, max_bad_steps 2: stops at step 4; checkpoint 2 is the last
        {"name": "diverge", "overrides": diverge, "poison": _poison((0, [3, 4, 5, 6], "loss"))},
        {"name": "resume", "dir": "diverge", "resume": True,
         "overrides": {**diverge, "train": {**diverge["train"], "max_steps": 3}}},
        # a resume must keep the model: a clear error, the checkpoint untouched
        {"name": "other-model", "dir": "diverge", "resume": True, "overrides": {**diverge, "model": {"d_model": 48}}},
    ], root / "shards")
    # ... and the number of ranks (each rank's data position is in the checkpoint)
    one = launch_runs(root, [{"name": "one-rank", "dir": "diverge", "resume": True, "overrides": diverge}],
                      root / "shards", nproc=1)
    return root, proc.stdout + proc.stderr + one.stdout + one.stderr


def test_nan_loss_on_one_rank_and_inf_gradient_are_skipped_on_both_ranks_zero2(runs):
    root, output = runs
    run = root / "skip"
    traces = [trace(root, r, "skip") for r in (0, 1)]
    for t in traces:
        losses = t["losses"]
        assert math.isnan(losses[1]) and all(math.isfinite(x) for i, x in enumerate(losses) if i != 1)
        before = t["hashes"][0::2]  # weights before steps 1..4
        assert before[0] != before[1], "step 1 updated the weights"
        assert before[1] == before[2] == before[3], "steps 2 and 3 left the weights as they were"
        assert t["final_hash"] != before[3], "step 4 updated the weights"
        # Adam ran twice (its moments and step count untouched by the skipped steps);
        # DeepSpeed's counters stayed on the accumulation boundaries.
        assert (t["adam_steps"], t["skipped_steps"], t["global_steps"], t["micro_steps"]) == (2, 2, 4, 8)
        # the schedule still advanced over the skipped steps: the lr of step s is lr_at(s)
        tc = TrainConfig(max_steps=4, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=1)
        assert t["lrs"][0::2] == pytest.approx([lr_at(s, tc) for s in range(4)])
    assert traces[0]["hashes"] == traces[1]["hashes"] and traces[0]["losses"][2:] == traces[1]["losses"][2:]
    records = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert [r.get("skipped", False) for r in records] == [False, True, True, False]
    assert records[1]["loss"] is None and records[1]["what"].startswith("loss is nan (not finite in 1 of 4 micro")
    assert records[2]["loss"] == pytest.approx(traces[0]["losses"][2])
    assert "gradient is not finite" in records[2]["what"]
    bad = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "bad_step" in line]
    assert [(r["step"], r["consecutive"]) for r in bad] == [(2, 1), (3, 2)]
    assert "step 2: loss is nan" in output and "step 3: gradient is not finite" in output


def test_consecutive_bad_steps_stop_with_advice_and_the_last_checkpoint_resumes_zero3(runs):
    root, _ = runs
    run = root / "diverge"
    stopped = [trace(root, r, "diverge") for r in (0, 1)]
    assert stopped[0]["error"] == stopped[1]["error"]
    message = stopped[0]["error"]
    for text in ("TrainingDiverged: training diverged at step 4: loss is nan",
                 "2 consecutive bad steps (train.max_bad_steps=2)", "weights not updated by any of them",
                 f"the last good checkpoint is {run / 'deepspeed' / 'step_0000002'}",
                 "lower train.lr", "train.z_loss", "--resume"):
        assert text in message, text
    # nothing saved after the good step 2 (the "resume" run then added step 3)
    assert (run / "deepspeed" / "step_0000002").is_dir() and not (run / "deepspeed" / "step_0000004").exists()
    records = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("skipped", False)) for r in records[:4]] == [(1, False), (2, False), (3, True), (4, True)]
    for r in (0, 1):
        # the rank's ZeRO-3 partition before steps 2, 3, 4: step 3 left it as step 2 made it
        h = stopped[r]["hashes"]
        assert h[1] != h[2] == h[3]
        resumed = trace(root, r, "resume")  # from deepspeed/latest = step_0000002 to max_steps 3
        assert len(resumed["losses"]) == 1 and math.isfinite(resumed["losses"][0])
        assert resumed["hashes"][0] == h[2], "the resumed weights are step 2's"


def test_resume_with_another_model_or_world_size_is_a_clear_error(runs):
    root, _ = runs
    error = trace(root, 0, "other-model")["error"]
    assert error.startswith("ConfigError: cannot resume") and "model.d_model: 32 != 48" in error
    assert "config.json" in error  # names the run's own config to resume with
    error = trace(root, 0, "one-rank")["error"]
    assert error.startswith("ConfigError: cannot resume") and "on 1 ranks: it was saved by 2" in error
    assert (root / "diverge" / "deepspeed" / "step_0000002" / "xlstm_lm_state.json").is_file()


def test_resume_skips_a_checkpoint_whose_weights_are_not_finite(tmp_path):
    write_shards(DOCS, ByteTokenizer(), tmp_path / "shards")
    first = _zero(2, max_steps=4, save_every=2)
    launch_runs(tmp_path, [{"name": "run", "overrides": first}], tmp_path / "shards")
    copy = tmp_path / "run" / "deepspeed" / "step_0000004" / "model.safetensors"
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 2048] = b"\xff" * 2048  # readable, NaN values
    copy.write_bytes(bytes(raw))
    proc = launch_runs(tmp_path, [{"name": "again", "dir": "run", "resume": True,
                                   "overrides": _zero(2, max_steps=5, save_every=1)}], tmp_path / "shards")
    assert "step_0000004: model.safetensors holds" in proc.stdout + proc.stderr
    assert "resuming from step_0000002, the newest usable one" in proc.stdout + proc.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    # steps 1-4, then 3-5 again from checkpoint 2, all finite
    assert [r["step"] for r in records] == [1, 2, 3, 4, 3, 4, 5]
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) for r in records)
