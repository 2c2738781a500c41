"""Command line of ``train.py``: config file + ``key=value`` overrides -> ``train``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..config_utils import ConfigError, apply_overrides, load_yaml
from ..data.corpus import DataError
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint_config
from .config import TrainConfig
from .rundir import RunLock, check_run_dir, remove_stale_temporaries
from .trainer import TrainingDiverged, train

EXAMPLES = """\
examples:
  python train.py                                   # tiny model, built-in corpus, CPU, a few minutes
  python train.py --data my_texts/ --run-dir runs/mine
  python train.py --config configs/tiny.yaml train.max_steps=100 model.d_model=64
  python train.py --data book.txt data.tokenizer=sentencepiece data.sp_vocab_size=2048
  python train.py --run-dir runs/mine --resume      # continue from runs/mine/checkpoints/latest
  python train.py --run-dir runs/mine --resume train.max_steps=5000   # ... and train longer
  python train.py --init-from runs/mine --data more.txt --run-dir runs/cont    # continued pretraining
  python train.py --init-from hf/tiny --config configs/finetune/sft_example.yaml data.sft.path=sft.jsonl
                                                    # supervised fine-tuning (add train.lora.r=8 for LoRA)
  python train.py data.shards=data/shards --run-dir runs/s   # token shards in one process (no DeepSpeed)
  torchrun --nproc_per_node 8 train.py --config configs/deepspeed/zero2.yaml data.shards=data/shards
                                                    # DeepSpeed ZeRO on 8 GPUs (--init-from, data.sft, LoRA too)

With --init-from (a run dir, checkpoint or exported HF folder) the model config is
the source's: the config file's model section is ignored and command-line model.*
overrides may not change parameter shapes; data.tokenizer must be the source's.

model.vocab_size, when the config does not state it, is taken from the tokenizer.
Ctrl-C saves a checkpoint and exits; --resume continues exactly where it stopped.
On a CPU shared with other jobs, OMP_NUM_THREADS=1 can be much faster for small models.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train an xLSTM (or classic LSTM) language model.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, default=None,
        help="YAML run config (default: configs/tiny.yaml; with --resume: the run's saved config)",
    )
    parser.add_argument("--data", default=None, help="text file or folder of text files (sets data.path)")
    parser.add_argument("--run-dir", default=None, help="folder for checkpoints and metrics (sets train.run_dir)")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the run in the run dir from its latest checkpoint (an error if it has none)",
    )
    parser.add_argument(
        "--resume-or-new", action="store_true",
        help="continue the run if the run dir has a checkpoint, else start it there (for job schedulers)",
    )
    parser.add_argument(
        "--init-from", default=None,
        help="start from the weights (and model config) of a run dir, checkpoint or HF folder (sets train.init_from)",
    )
    # The `deepspeed` launcher appends --local_rank=N to the script's arguments (the rank
    # itself is read from the LOCAL_RANK variable it also sets).
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=3e-4 model.num_blocks=2")
    return parser


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    section = raw.get(name)
    if section is None:
        section = raw[name] = {}
    if not isinstance(section, dict):
        raise ConfigError(f"config section {name!r} must be a mapping, got {section!r}")
    return section


def _apply_cli(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "init_from", None) is not None and not args.resume:
        # The model comes from the source; only command-line model.* overrides apply on top.
        raw = {k: v for k, v in raw.items() if k != "model"}
    raw = apply_overrides(raw, args.overrides)
    if getattr(args, "init_from", None) is not None:
        _section(raw, "train")["init_from"] = args.init_from
    # Set directly, not via apply_overrides: a path must not be parsed as YAML.
    if args.data is not None:
        _section(raw, "data")["path"] = args.data
    if args.run_dir is not None:
        _section(raw, "train")["run_dir"] = args.run_dir
    return raw


def _run_dir_of(raw: dict[str, Any]) -> Path:
    return Path(_section(raw, "train").get("run_dir", TrainConfig.run_dir))


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint a run can continue from (either loop's layout)."""
    return latest_checkpoint(run_dir, warn=False) is not None or (run_dir / "deepspeed" / "latest").is_file()


def load_raw_config(args: argparse.Namespace, default_config: Path) -> dict[str, Any]:
    """The plain config dict of a command line (YAML file + overrides + --data/--run-dir).

    ``--resume`` needs a checkpoint in the run dir (an error names the folder
    otherwise: a typo must not start a fresh run); ``--resume-or-new`` continues when
    there is one and starts the run when there is none (for schedulers that rerun the
    same command). Without ``--config`` a resume uses the run's saved config."""
    base = load_yaml(args.config if args.config is not None else default_config)
    raw = _apply_cli(base, args)
    run_dir = _run_dir_of(raw)
    resume_or_new = getattr(args, "resume_or_new", False)
    found = (args.resume or resume_or_new) and has_checkpoint(run_dir)
    if resume_or_new and args.resume != found:
        # --init-from keeps the file's model section only on a resume: apply the command line again
        args.resume = found
        raw = _apply_cli(base, args)
    if not args.resume:
        return raw
    if not found:
        what = "does not exist" if not run_dir.exists() else "holds no checkpoint (no checkpoints/latest, no deepspeed/latest)"
        raise ConfigError(
            f"--resume: the run dir {run_dir} {what}; check --run-dir, or leave out --resume to start a new run "
            "there (--resume-or-new does either)"
        )
    if args.config is not None:
        return raw
    ckpt = latest_checkpoint(run_dir, warn=False)  # the loop reports a fallback
    if ckpt is not None:
        return _apply_cli(load_checkpoint_config(ckpt), args)
    # A run of the DeepSpeed loop: its resolved config sits next to deepspeed/latest.
    return _apply_cli(json.loads((run_dir / "config.json").read_text()), args)


def main(argv: list[str] | None = None, default_config: str | Path = "configs/tiny.yaml") -> int:
    """Parse ``argv``, train, and return the process exit code (0 done, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    lock = None
    try:
        raw = load_raw_config(args, Path(default_config))
        from .config import build_run_config
        from .distributed import close_process_group, train_distributed, wants_distributed

        cfg = build_run_config(raw)
        if int(os.environ.get("RANK", "0")) == 0:
            # One run per run dir: global rank 0 holds the lock for every rank of this run.
            run_dir = check_run_dir(cfg.train.run_dir)
            lock = RunLock(run_dir).acquire()
            remove_stale_temporaries(run_dir)
        if wants_distributed(cfg):
            # Under a launcher or with train.distributed.enabled.
            try:
                train_distributed(raw, resume=args.resume)
            finally:
                close_process_group()
            return 0
        result = train(raw, resume=args.resume)
    except (ConfigError, DataError, FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        # e.g. the run dir or a file in it made read-only mid-run; earlier checkpoints are untouched
        print(f"error: cannot write {e.filename}: {e.strerror}; make it writable (or choose another --run-dir) "
              "and continue with --resume", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C before the training loop (or pressed twice): nothing new to save.
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()
    return 130 if result.interrupted else 0


__all__ = ["build_parser", "load_raw_config", "main"]
