"""The PyTorch-paths benchmark runs end to end in --dry-run mode (tiny shapes, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_dry(tmp_path, *extra):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench_cpu.py"), "--dry-run", "--device", "cpu", "--out", str(tmp_path), *extra],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("pytorch-paths-*.json")
    return proc.stdout, json.loads(path.read_text())


def test_bench_cpu_dry_run_checks_then_times_every_comparison(tmp_path):
    stdout, record = run_dry(tmp_path)
    assert record["bench"] == "pytorch-paths" and record["dry_run"] is True and record["threads"] == 1
    assert "ratio (medians" in stdout
    rows = record["results"]
    assert {r["case"] for r in rows} == {"mlstm-scaling", "mlstm-4k fwd", "mlstm-4k fwd+bwd", "slstm", "lstm-block"}
    ours = [r for r in rows if r["name"].startswith("ours")]
    assert len(ours) == 4 + 2 + 2 + 1
    for r in rows:
        # every peer here is installed with the dev extra: nothing may be skipped
        assert "skipped" not in r, r
        assert r["time"]["median_ms"] > 0 and r["time"]["n"] == record["reps"]
    for r in ours:
        assert r["rel_err"] <= r["tol"] == record["tolerance_rel_rms"], r
    assert all(r["value"] is not None and r["value"] > 0 for r in record["ratios"]), record["ratios"]


def test_bench_cpu_baseline_revision_is_timed_beside_ours(tmp_path):
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    _, record = run_dry(tmp_path, "--baseline", "HEAD", "--only", "lstm-block")
    names = {r["name"] for r in record["results"]}
    assert "baseline@HEAD: lstm block" in names
    baseline = next(r for r in record["results"] if r["name"] == "baseline@HEAD: lstm block")
    assert baseline["rel_err"] <= record["tolerance_rel_rms"] and baseline["time"]["median_ms"] > 0
    assert record["baseline"]["rev"] == "HEAD" and len(record["baseline"]["commit"]) == 40
    assert any(r["name"].endswith("ours/baseline") for r in record["ratios"])
