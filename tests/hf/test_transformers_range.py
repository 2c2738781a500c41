"""The Hugging Face tests on the oldest transformers release we support.

The suite itself runs on the lock (the newest release we support). This test puts
the releases pinned in ``requirements/transformers-oldest.txt`` (installed once,
with ``--no-deps``, into a cache folder keyed by that file's content) in front of
the same environment and runs every other test of ``tests/hf`` there, in a child
process: generation invariants, the transformers contracts, export, peft, lm-eval
and the native format, on both ends of the supported range.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests.hf import REPO

PINS = REPO / "requirements" / "transformers-oldest.txt"


def oldest_transformers_dir() -> Path:
    """A folder holding exactly the pinned packages (installed on first use)."""
    digest = hashlib.sha256(PINS.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xlstm-lm" / f"transformers-oldest-{digest}"
    done = cache / ".installed"
    if not done.exists():
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(cache), "-r", str(PINS)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (
            f"could not install {PINS.name} from the package registry (needed to test the oldest supported "
            f"transformers):\n{result.stderr[-3000:]}"
        )
        done.write_text("ok\n")
    return cache


def test_hf_suite_passes_on_the_oldest_supported_transformers():
    pins = dict(line.split("==") for line in PINS.read_text().split("\n") if "==" in line and not line.startswith("#"))
    site = oldest_transformers_dir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env["OMP_NUM_THREADS"] = "1"
    probe = subprocess.run(
        [sys.executable, "-c", "import transformers, huggingface_hub; print(transformers.__version__, huggingface_hub.__version__)"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert probe.stdout.split() == [pins["transformers"], pins["huggingface-hub"]], probe.stdout + probe.stderr[-2000:]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/hf", f"--ignore=tests/hf/{Path(__file__).name}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, f"tests/hf on transformers {pins['transformers']}: {summary}\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    assert " passed" in summary and "failed" not in summary, summary
