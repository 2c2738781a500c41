"""What people watch during a run: throughput, MFU, metrics.jsonl, optional TensorBoard.

MFU (model FLOPs utilisation) = achieved training FLOPs per second per device /
the device's dense bf16 peak; the model's FLOPs per token come from
``model.flops_per_token(seq_len)``, the peak from ``PEAK_FLOPS`` by device name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

#: Dense bf16 tensor-core peak FLOP/s by a substring of ``torch.cuda.get_device_name()``.
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
}


def peak_flops(device: torch.device) -> float | None:
    """The bf16 peak of ``device`` (None on CPU or for an unknown GPU: MFU is then n/a)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def mfu(tokens_per_s_per_device: float, flops_per_token: float | None, peak: float | None) -> float | None:
    """Fraction of the peak achieved (None when either number is unknown)."""
    if peak is None or flops_per_token is None:
        return None
    return tokens_per_s_per_device * flops_per_token / peak


def format_mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


class MetricsLog:
    """One JSON object per line to ``path``; mirrored to TensorBoard when it is installed.

    ``resume_step``: None starts the file afresh; otherwise records after that step
    (written after the checkpoint being resumed) are dropped, since they are redone.
    """

    def __init__(self, path: Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None or not path.is_file():
            path.write_text("")
        else:
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            path.write_text("".join(ln + "\n" for ln in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                # TensorBoard is optional: metrics.jsonl always has everything.
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(path.parent / "tensorboard"))

    def log(self, **record: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and "step" in record:
            split = record.get("split", "train")
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(f"{split}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


__all__ = ["MetricsLog", "PEAK_FLOPS", "format_mfu", "mfu", "peak_flops"]
