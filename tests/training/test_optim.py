"""Learning-rate schedules, z-loss, and which parameters AdamW decays."""

from __future__ import annotations

import math

import pytest
import torch

from tests.training.test_train import tiny_raw
from xlstm_lm.config import ModelConfig
from xlstm_lm.config_utils import ConfigError, from_dict
from xlstm_lm.models import XLSTMLM
from xlstm_lm.training import train
from xlstm_lm.training.config import TrainConfig
from xlstm_lm.training.optim import build_optimizer, lr_at, split_decay, z_loss

TINY_MODEL = {"vocab_size": 256, "d_model": 32, "num_blocks": 2, "pattern": "ms",
              "mlstm": {"num_heads": 2, "chunk_size": 8}, "slstm": {"num_heads": 2}}


def test_wsd_schedule_warms_up_holds_then_decays_to_min_lr():
    cfg = TrainConfig(max_steps=10, warmup_steps=2, schedule="wsd", decay_fraction=0.3, lr=1.0, min_lr=0.1)
    lrs = [lr_at(s, cfg) for s in range(10)]
    assert lrs[:7] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert lrs[7:] == pytest.approx([0.7, 0.4, 0.1])
    with pytest.raises(ConfigError, match="train.decay_fraction must be in"):
        TrainConfig(schedule="wsd", decay_fraction=0.0)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "wsd"])
def test_every_schedule_starts_with_warmup_and_ends_in_range(schedule):
    cfg = TrainConfig(max_steps=100, warmup_steps=10, schedule=schedule, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert all(1e-4 - 1e-12 <= lr_at(s, cfg) <= 1e-3 + 1e-12 for s in range(10, 100))
    expected_end = 1e-3 if schedule == "constant" else 1e-4
    # cosine and linear reach min_lr at step max_steps, wsd already at the last step (max_steps - 1)
    assert lr_at(100, cfg) == pytest.approx(expected_end, rel=1e-9)
    if schedule == "wsd":
        assert lr_at(99, cfg) == pytest.approx(1e-4, rel=1e-9)


def test_z_loss_value_and_training_option(tmp_path):
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, 2, -100, 3, 4], [0, -100, -100, 6, 5]])
    keep = labels != -100
    expected = torch.logsumexp(logits, -1)[keep].square().mean()
    torch.testing.assert_close(z_loss(logits, labels), expected)
    base = train(tiny_raw(tmp_path / "a", "train.max_steps=1", "train.sample_tokens=0"), progress=False)
    with_z = train(tiny_raw(tmp_path / "b", "train.max_steps=1", "train.sample_tokens=0", "train.z_loss=0.01"), progress=False)
    # Same weights and batch at step 1; the logits at initialisation are small, not zero, so
    # logsumexp is log(256) plus a little: the added term is 0.01 * log(256)^2 within 10%.
    assert with_z.train_losses[0] - base.train_losses[0] == pytest.approx(0.01 * math.log(256) ** 2, rel=0.1)


def test_weight_decay_groups_of_the_tiny_model():
    model = XLSTMLM(from_dict(ModelConfig, TINY_MODEL))
    decay, no_decay = split_decay(model)
    assert decay == [
        "blocks.0.mlstm.proj_up.weight", "blocks.0.mlstm.q_proj.weight", "blocks.0.mlstm.k_proj.weight",
        "blocks.0.mlstm.v_proj.weight", "blocks.0.mlstm.conv.weight", "blocks.0.mlstm.igate.weight",
        "blocks.0.mlstm.fgate.weight", "blocks.0.mlstm.proj_down.weight",
        "blocks.1.slstm.recurrent_kernel", "blocks.1.slstm.conv.weight", "blocks.1.slstm.igate.weight",
        "blocks.1.slstm.fgate.weight", "blocks.1.slstm.zgate.weight", "blocks.1.slstm.ogate.weight",
        "blocks.1.ffn.gate.weight", "blocks.1.ffn.up.weight", "blocks.1.ffn.down.weight", "lm_head.weight",
    ]
    assert no_decay == [
        "embedding.weight", "blocks.0.norm.weight", "blocks.0.mlstm.learnable_skip", "blocks.0.mlstm.conv.bias",
        "blocks.0.mlstm.igate.bias", "blocks.0.mlstm.fgate.bias", "blocks.0.mlstm.out_norm.weight",
        "blocks.1.norm.weight",
        # the sLSTM gate bias is (NH, 4, DH), not 1-d: excluded by its name
        "blocks.1.slstm.bias",
        "blocks.1.slstm.conv.bias", "blocks.1.slstm.out_norm.weight", "blocks.1.ffn_norm.weight", "final_norm.weight",
    ]
    decay_emb, _ = split_decay(model, decay_embeddings=True)
    assert decay_emb == ["embedding.weight", *decay]
    groups = build_optimizer(model, TrainConfig(weight_decay=0.1)).param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in groups] == [len(decay), len(no_decay)]


def test_tied_head_is_listed_once_with_the_embedding():
    model = XLSTMLM(from_dict(ModelConfig, {**TINY_MODEL, "tie_embeddings": True}))
    decay, no_decay = split_decay(model)
    assert "lm_head.weight" not in decay + no_decay and "embedding.weight" in no_decay
