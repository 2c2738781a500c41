"""The training benchmark runs end to end in --dry-run mode (tiny models, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_train_dry_run_writes_a_record(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench_train.py"), "--dry-run", "--steps", "2", "--warmup", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("train-*.json")
    record = json.loads(path.read_text())
    assert record["bench"] == "train" and record["dry_run"] is True
    rows = record["results"]
    assert {(r["model"], r["context"]) for r in rows} == {(m, t) for m in ("ours", "llama-sdpa") for t in (32, 64)}
    (p,) = record["params"].values()
    # equal-size peer: parameter counts within 25% at the tiny dry-run size
    assert abs(p["ours"] - p["llama-sdpa"]) / p["ours"] < 0.25, p
    for r in rows:
        assert r["tokens_per_s_per_gpu"] > 0 and r["flops_per_token"] > 0
        assert r["mfu"] is None and r["peak_mem_mb"] is None  # CPU: no peak FLOPs, no CUDA memory
