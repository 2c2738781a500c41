"""The kernel benchmark runs end to end in --dry-run mode (CPU, Triton interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


def test_bench_kernels_dry_run_writes_a_checked_record(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench_kernels.py"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio = our forward time" in proc.stdout
    (record_path,) = tmp_path.glob("kernels-*.json")
    record = json.loads(record_path.read_text())
    assert record["dry_run"] and record["versions"]["torch"]
    ours = [r for r in record["results"] if r["impl"].startswith("ours")]
    assert {r["case"].split()[0] for r in ours} >= {"mlstm", "slstm"}
    for row in ours:
        assert row.get("correct"), row
        assert row["fwd"]["median_ms"] > 0
