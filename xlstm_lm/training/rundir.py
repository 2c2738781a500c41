"""A run directory belongs to one run at a time.

``RunLock`` is held for the life of a run (``train.py`` takes it before anything is
written; under a launcher only global rank 0 takes it, for all ranks of that run). A
second run started in the same folder stops at once, naming the holder (pid, host,
start time, command) and what to do. The lock is an ``fcntl.flock`` on
``run_dir/.lock``, which the operating system releases when the holder dies, even by
SIGKILL, so a lock left by a dead process is taken over (with a note), never
obeyed. (On a network file system whose ``flock`` is not shared between hosts, two
hosts are not kept apart; the holder file still names the other run.)

``check_run_dir`` turns a run dir that cannot be one (a file, an unwritable folder)
into a one-line ``ConfigError`` before any work; ``remove_stale_temporaries`` deletes
the half-written checkpoint folders a killed save leaves (only ever called under the
lock, so no live writer owns them).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from ..config_utils import ConfigError

LOCK_FILE = ".lock"


def check_run_dir(run_dir: str | Path) -> Path:
    """Create ``run_dir`` if needed and make sure a run can write there."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a folder; choose another --run-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the run dir {run_dir} ({e.strerror}); choose a writable --run-dir") from None
    for folder in (run_dir, *(p for p in (run_dir / "checkpoints", run_dir / "deepspeed") if p.is_dir())):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{folder} is not writable by this user; fix its permissions or choose another --run-dir")
    return run_dir


def remove_stale_temporaries(run_dir: str | Path) -> list[str]:
    """Delete ``checkpoints/.tmp_*`` folders and pointer files left by a save that was killed."""
    root = Path(run_dir) / "checkpoints"
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp_", ".latest.tmp")):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p.name)
    return removed


class RunLock:
    """Exclusive use of a run dir by this process (see the module docstring)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ConfigError(
                f"run dir {self.path.parent} is in use by another run ({holder}); wait for it to finish or stop it, "
                "or choose another --run-dir"
            ) from None
        previous = _read_holder(fd, default="")
        if previous:
            print(f"run dir {self.path.parent}: taking over the lock of a run that is gone ({previous})")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # empty file = free; the flock itself goes with the descriptor
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int, default: str = "holder unknown") -> str:
    raw = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    if not raw:
        return default
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on {info['host']} since {info['started']}: {info['command']}"
    except (ValueError, KeyError):
        return raw[:200]


__all__ = ["LOCK_FILE", "RunLock", "check_run_dir", "remove_stale_temporaries"]
