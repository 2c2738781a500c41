"""The JSON record every benchmark script writes (protocol: ../shared/BENCHMARKS.md).

``write_record`` adds the date, the git commit and the tracked files changed since it
(the code measured is the working tree) and writes
``<out>/<bench>-<device>-<date>.json``; the default folder is
``benchmarks/results/`` (``runs/bench-dry-run/`` for dry runs, which are not results).
"""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


def uncommitted_files() -> list[str] | None:
    """Tracked files that differ from the commit (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except Exception:  # noqa: BLE001
        return None
    return [line[3:] for line in out.splitlines()]


def write_record(bench: str, device_name: str, dry_run: bool, record: dict, out: str | None = None) -> Path:
    """Write ``record`` (plus bench, device, dry_run, date, commit) and return its path."""
    full = {
        "bench": bench,
        "device": device_name,
        "dry_run": dry_run,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "uncommitted": uncommitted_files(),
        **record,
    }
    out_dir = Path(out or (ROOT / ("runs/bench-dry-run" if dry_run else "benchmarks/results")))
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in device_name).strip("-").lower()
    path = out_dir / f"{bench}-{slug}-{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(full, indent=2))
    print(f"\nrecord: {path}")
    return path
