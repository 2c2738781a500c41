"""The DeepSpeed JSON derived from the run config: global batch, micro batch and
accumulation agree for any number of ranks, and the shipped pretraining configs
resolve on 1, 8 and 16 GPUs."""

from __future__ import annotations

import glob

import pytest

from xlstm_lm.config_utils import ConfigError, apply_overrides, load_yaml
from xlstm_lm.training.config import build_run_config
from xlstm_lm.training.distributed import build_deepspeed_config
from xlstm_lm.training.faults import oom_message


def _ds(world: int, *overrides: str) -> dict:
    raw = apply_overrides(load_yaml("configs/deepspeed/zero2.yaml"), ["train.batch_size=64", *overrides])
    return build_deepspeed_config(build_run_config(raw), world)


def _batch(ds: dict) -> tuple[int, int, int]:
    return ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]


def test_micro_batch_and_accumulation_follow_the_global_batch():
    assert _batch(_ds(8)) == (8, 1, 64)
    assert _batch(_ds(8, "train.distributed.grad_accum=4")) == (2, 4, 64)
    # micro_batch given: accumulation derived, train.batch_size kept for any world size
    assert _batch(_ds(8, "train.distributed.micro_batch=2")) == (2, 4, 64)
    assert _batch(_ds(2, "train.distributed.micro_batch=2")) == (2, 16, 64)
    assert _batch(_ds(8, "train.distributed.micro_batch=2", "train.distributed.grad_accum=4")) == (2, 4, 64)


@pytest.mark.parametrize("overrides, message", [
    (["train.distributed.grad_accum=3"], "not divisible by world_size 8 x train.distributed.grad_accum 3"),
    (["train.distributed.micro_batch=3"], "not divisible by world_size 8 x train.distributed.micro_batch 3"),
    (["train.distributed.micro_batch=2", "train.distributed.grad_accum=2"], "it is derived: 4"),
])
def test_inconsistent_batch_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _ds(8, *overrides)


@pytest.mark.parametrize("path", sorted(glob.glob("configs/pretrain/*.yaml")))
@pytest.mark.parametrize("world", [1, 8, 16])
def test_pretraining_configs_resolve(path, world):
    cfg = build_run_config(load_yaml(path))
    micro, accum, total = _batch(build_deepspeed_config(cfg, world))
    assert total == cfg.train.batch_size and micro * accum * world == total


def test_oom_advice_names_micro_batch_when_it_is_set():
    assert "lower train.distributed.micro_batch" in oom_message(batch_size=64, seq_len=128, grad_accum=4, micro_batch=2,
                                                               world_size=8, zero_stage=2)
    assert "raise train.distributed.grad_accum" in oom_message(batch_size=64, seq_len=128, grad_accum=1,
                                                              world_size=8, zero_stage=2)
