"""The generation benchmark runs end to end in --dry-run mode (tiny models, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_generate_dry_run_writes_a_record(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench_generate.py"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("generate-*.json")
    record = json.loads(path.read_text())
    models = {r["model"] for r in record["results"]}
    assert models == {"ours", "llama-sdpa"}
    # equal-size peer: parameter counts within 25% at the tiny dry-run size
    p = record["params"]
    assert abs(p["ours"] - p["llama-sdpa"]) / p["ours"] < 0.25, p
    for r in record["results"]:
        assert r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0
    long_rows = [r for r in record["results"] if r.get("long")]
    assert len(long_rows) == 2 and all(r["tokens_per_s_by_window"] for r in long_rows)
