"""tools/plot_metrics.py draws the curves of a real (tiny) single-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.training.test_train import tiny_raw
from xlstm_lm.training import train

ROOT = Path(__file__).resolve().parents[2]


def test_plot_metrics_of_a_tiny_run(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(tiny_raw(tmp_path, "train.sample_tokens=0"), progress=False)
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_metrics.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = tmp_path / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    missing = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_metrics.py"), str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert missing.returncode != 0 and "metrics.jsonl not found" in missing.stderr
