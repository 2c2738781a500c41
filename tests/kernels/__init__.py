"""Shared by the kernel tests: compiling Triton kernels for GPU targets without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys


def has_ptxas() -> bool:
    """Whether Triton's NVIDIA backend (ptxas) is installed, so kernels compile to cubins here."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return os.path.exists(get_ptxas(90).path)
    except Exception:
        return False


def compile_offline(script: str, expected: int) -> None:
    """Run ``script`` (which prints "compiled ..." per kernel and target) in a fresh
    interpreter without TRITON_INTERPRET, and check that ``expected`` compilations succeeded."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("compiled") == expected, proc.stdout
