"""What people watch during a run: throughput, MFU, metrics.jsonl, TensorBoard, wandb, metrics.png.

MFU (model FLOPs utilisation) = achieved training FLOPs per second per device /
the device's dense bf16 peak; the model's FLOPs per token come from
``model.flops_per_token(seq_len)``, the peak from ``PEAK_FLOPS`` by device name.

``MetricsLog`` is the one writer of a run's metrics, in both training loops (rank 0
of the DeepSpeed one): ``run_dir/metrics.jsonl`` always; the same numbers as
TensorBoard scalars in ``run_dir/tensorboard/`` (``train.tensorboard``, default on)
and in a Weights & Biases run (``train.wandb_project``), tagged ``split/key``
(``record_scalars``); ``run_dir/metrics.png`` (``training.plot``) when it closes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..config_utils import ConfigError, to_dict

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


def record_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one metrics record under their TensorBoard / wandb names.

    ``split/key`` (``train/loss``, ``val/ppl``), or ``split/kind/key`` for records with a
    ``kind`` (``val/unigram_baseline/ppl``, ``train/bad_step/consecutive``); strings and
    None (e.g. ``mfu`` on CPU) are left out, as are ``step``, ``split`` and ``kind``.
    """
    split, kind = record.get("split", "train"), record.get("kind")
    prefix = f"{split}/{kind}/" if kind else f"{split}/"
    return {
        prefix + key: float(value)
        for key, value in record.items()
        if key not in ("step", "split", "kind") and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def json_line(record: dict[str, Any]) -> str:
    """``record`` as one line of strict JSON: a NaN or infinite float (a diverged loss)
    becomes null, since bare ``NaN`` is not JSON and breaks other readers."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def import_wandb():
    """The ``wandb`` module, or a ConfigError saying how to get it (asked for by ``train.wandb_project``)."""
    try:
        import wandb
    except ImportError as e:
        raise ConfigError(
            f"train.wandb_project is set but wandb cannot be imported ({e}): pip install wandb "
            "(and `wandb login`), or set train.wandb_project=null"
        ) from None
    return wandb


class MetricsLog:
    """One JSON object per line to ``path``, mirrored to TensorBoard and (optionally) wandb;
    ``close()`` draws ``metrics.png`` next to it.

    ``resume_step``: None starts the file afresh; otherwise records after that step
    (written after the checkpoint being resumed) are dropped, since they are redone,
    and TensorBoard is told to purge its events from ``resume_step + 1`` on.
    ``tensorboard``: write ``tensorboard/`` event files next to ``path`` (a printed note,
    not an error, when TensorBoard cannot be imported: the JSONL has everything).
    ``wandb_project``: also log to that Weights & Biases project (``config`` is stored
    with the wandb run); ConfigError when wandb is not installed.
    ``plot``: write ``metrics.png`` (``training.plot``) on ``close()``; skipped with one
    printed line when matplotlib is missing.

    Only the process that logs creates one (rank 0 in the DeepSpeed loop).
    """

    def __init__(
        self,
        path: Path,
        resume_step: int | None = None,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        config: dict[str, Any] | None = None,
        plot: bool = True,
    ):
        self.path = Path(path)
        self.plot = plot
        self.closed = False
        run_dir = self.path.parent
        # a missing wandb fails before any file is touched
        wandb = import_wandb() if wandb_project is not None else None
        run_dir.mkdir(parents=True, exist_ok=True)
        self.wandb_run = None
        if wandb is not None:
            self.wandb_run = wandb.init(project=wandb_project, name=run_dir.name, dir=str(run_dir), config=config)
        if resume_step is None or not self.path.is_file():
            self.path.write_text("")
        else:
            kept = [
                ln for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                print(f"TensorBoard not written ({e}): pip install tensorboard, or set train.tensorboard=false")
            else:
                purge = None if resume_step is None else resume_step + 1
                self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)

    @classmethod
    def from_config(cls, path: Path, cfg: Any, resume_step: int | None = None) -> MetricsLog:
        """The log a run asks for in ``cfg.train`` (a RunConfig): ``tensorboard``, ``wandb_project``."""
        tc = cfg.train
        return cls(path, resume_step, tensorboard=tc.tensorboard, wandb_project=tc.wandb_project, config=to_dict(cfg))

    def log(self, **record: Any) -> None:
        with self.path.open("a") as f:
            f.write(json_line(record))
        if "step" not in record:
            return
        scalars = record_scalars(record)
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, record["step"])
        if self.wandb_run is not None and scalars:
            self.wandb_run.log(scalars, step=record["step"])

    def close(self) -> None:
        """Flush TensorBoard, finish the wandb run, write ``metrics.png``; a second call does nothing."""
        if self.closed:
            return
        self.closed = True
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.plot:
            self.write_plot()

    def write_plot(self) -> Path | None:
        """``metrics.png`` next to the JSONL; never raises (a run must not fail on its plot)."""
        from .plot import NothingToPlot, plot_metrics, read_metrics

        out = self.path.with_name("metrics.png")
        try:
            return plot_metrics(read_metrics(self.path), out, title=str(self.path.parent))
        except NothingToPlot:
            return None
        except ImportError as e:
            print(f"{out.name} not written: matplotlib is not installed ({e}); pip install matplotlib")
        except Exception as e:  # noqa: BLE001 - reported, and the run goes on
            print(f"{out.name} not written: {type(e).__name__}: {e}")
        return None


__all__ = ["MetricsLog", "PEAK_FLOPS", "format_mfu", "import_wandb", "json_line", "mfu", "peak_flops", "record_scalars"]
