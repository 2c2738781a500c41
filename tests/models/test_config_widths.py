"""Projection widths derived by ``ModelConfig`` equal the reference implementations'.

Checkpoints of the reference ``xlstm`` package and of transformers' built-in xLSTM
are sized by their own rounding rules, so a width that differs by one rounding step
makes conversion fail with a size mismatch. Two rules exist and both are checked at
every d_model from 64 to 1024 in steps of 32 (384 among them, where they differ for
the xLSTM-7B SwiGLU: 1024.128 -> 1024, not 1088) and at every shipped config's width:

- paper blocks (``xLSTMLMModel``): mLSTM inner dim and sLSTM feed-forward dim round a
  fractional product up (``xlstm.utils.UpProjConfigMixin``);
- xLSTM-7B blocks (``xLSTMLarge``, transformers' ``xLSTMForCausalLM``): the SwiGLU dim
  drops the fraction first (``round_up_to_next_multiple_of``).

Then models at two of the widths where the rules differ round-trip through
transformers' built-in format with equal logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import assert_close
from xlstm_lm.config import ModelConfig
from xlstm_lm.config_utils import from_dict, load_yaml

xlstm = pytest.importorskip("xlstm", reason="the reference package is in the dev extra: pip install -e '.[dev]'")

WIDTHS = list(range(64, 1025, 32))
# xLSTM-7B's 2.667 (ours, transformers), xLSTMLarge's default 2.6667, and 8/3
SEVEN_B_FACTORS = (2.667, 2.6667, 8 / 3)
# mLSTM up-projection (paper: 2) and sLSTM feed-forward (reference code 1.3, paper 4/3)
PAPER_FACTORS = (1.3, 4 / 3, 2.0)


def _cfg(**fields) -> ModelConfig:
    return from_dict(ModelConfig, fields, "model")


def _shipped_model_configs() -> list[tuple[str, ModelConfig]]:
    """Every config under configs/ with blocks whose widths are rounded (not the
    classic baselines)."""
    root = Path(__file__).resolve().parents[2]
    out = []
    for path in sorted((root / "configs").rglob("*.yaml")):
        data = load_yaml(path)
        if isinstance(data, dict) and "model" in data:
            cfg = from_dict(ModelConfig, data["model"], "model")
            if {"mlstm", "slstm", "mlstm7b"} & set(cfg.block_kinds):
                out.append((str(path.relative_to(root)), cfg))
    return out


SHIPPED = _shipped_model_configs()


def _transformers_ffn_dim(d_model: int, factor: float, round_to: int) -> int:
    """The SwiGLU width of a one-block ``xLSTMForCausalLM`` built from ``xLSTMConfig``
    (on the meta device: shapes only)."""
    from transformers import xLSTMConfig, xLSTMForCausalLM

    hf_cfg = xLSTMConfig(
        vocab_size=8, hidden_size=d_model, num_hidden_layers=1, num_heads=2,
        ffn_proj_factor=factor, ffn_round_up_to_multiple_of=round_to,
    )
    with torch.device("meta"):
        model = xLSTMForCausalLM(hf_cfg)
    return model.backbone.blocks[0].ffn.proj_up.weight.shape[0]


def _xlstm_large_ffn_dim(d_model: int, factor: float, round_to: int) -> int:
    from xlstm.xlstm_large.utils import round_up_to_next_multiple_of

    return round_up_to_next_multiple_of(d_model * factor, round_to)


@pytest.mark.parametrize("factor", SEVEN_B_FACTORS, ids=["2.667", "2.6667", "8/3"])
def test_7b_ffn_width_equals_xlstm_large_and_transformers(factor):
    for d in WIDTHS:
        for round_to in (64, 128):
            ours = _cfg(d_model=d, mlstm7b={"ffn_proj_factor": factor, "ffn_round_to": round_to}).mlstm7b_ffn_dim
            assert ours == _xlstm_large_ffn_dim(d, factor, round_to), f"d_model={d} round_to={round_to}"
        # building the transformers model costs ~10 ms, so once per width
        assert _cfg(d_model=d, mlstm7b={"ffn_proj_factor": factor}).mlstm7b_ffn_dim == _transformers_ffn_dim(
            d, factor, 64
        ), f"d_model={d}"


def test_7b_ffn_width_at_384_is_the_truncating_rule():
    assert _cfg(d_model=384).mlstm7b_ffn_dim == 1024


@pytest.mark.parametrize("factor", PAPER_FACTORS, ids=["1.3", "4/3", "2"])
def test_paper_widths_equal_xlstm_lm_model(factor):
    from xlstm import FeedForwardConfig, mLSTMLayerConfig

    for d in WIDTHS:
        for round_to in (64, 128):
            cfg = _cfg(
                d_model=d,
                mlstm={"proj_factor": factor, "round_to": round_to},
                slstm={"ffn_proj_factor": factor, "round_to": round_to},
            )
            layer = mLSTMLayerConfig(embedding_dim=d, proj_factor=factor, round_proj_up_to_multiple_of=round_to)
            ffn = FeedForwardConfig(embedding_dim=d, proj_factor=factor, round_proj_up_to_multiple_of=round_to)
            assert cfg.mlstm_inner_dim == layer._inner_embedding_dim, f"mLSTM d_model={d} round_to={round_to}"
            assert cfg.slstm_ffn_dim == ffn._proj_up_dim, f"sLSTM FFN d_model={d} round_to={round_to}"


@pytest.mark.parametrize("path,cfg", SHIPPED, ids=[p for p, _ in SHIPPED])
def test_shipped_config_widths_equal_references(path, cfg):
    from xlstm import FeedForwardConfig, mLSTMLayerConfig

    kinds = set(cfg.block_kinds)
    if "mlstm7b" in kinds:
        m = cfg.mlstm7b
        assert cfg.mlstm7b_ffn_dim == _xlstm_large_ffn_dim(cfg.d_model, m.ffn_proj_factor, m.ffn_round_to)
        assert cfg.mlstm7b_ffn_dim == _transformers_ffn_dim(cfg.d_model, m.ffn_proj_factor, m.ffn_round_to)
    if "mlstm" in kinds:
        layer = mLSTMLayerConfig(
            embedding_dim=cfg.d_model, proj_factor=cfg.mlstm.proj_factor,
            round_proj_up_to_multiple_of=cfg.mlstm.round_to,
        )
        assert cfg.mlstm_inner_dim == layer._inner_embedding_dim
    if "slstm" in kinds:
        ffn = FeedForwardConfig(
            embedding_dim=cfg.d_model, proj_factor=cfg.slstm.ffn_proj_factor,
            round_proj_up_to_multiple_of=cfg.slstm.round_to,
        )
        assert cfg.slstm_ffn_dim == ffn._proj_up_dim


# 384 x 2.667 = 1024.128 and 768 x 2.667 = 2048.256: the widths where rounding the
# fraction up (the old rule) gave 1088 and 2112 and the export failed
@pytest.mark.parametrize("d_model", [384, 768])
def test_native_round_trip_at_width(d_model):
    from transformers import xLSTMForCausalLM

    from xlstm_lm.convert.hf_native import from_hf_xlstm, to_hf_xlstm
    from xlstm_lm.models import XLSTMLM

    torch.manual_seed(0)
    cfg = _cfg(
        vocab_size=32, d_model=d_model, num_blocks=1, block="mlstm7b", norm="rmsnorm", norm_eps=1e-6,
        logit_soft_cap=30.0, mlstm7b={"num_heads": 2, "chunk_size": 8},
    )
    ours = XLSTMLM(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theirs = to_hf_xlstm(ours)
    assert type(theirs) is xLSTMForCausalLM
    assert theirs.backbone.blocks[0].ffn.proj_up.weight.shape[0] == cfg.mlstm7b_ffn_dim
    back = from_hf_xlstm(theirs)
    ids = torch.randint(0, 32, (2, 11))
    with torch.no_grad():
        ref = ours(ids).logits
        assert_close(theirs(ids).logits, ref, rtol=1e-5, atol_floor=0, msg="export")
        assert_close(back(ids).logits, ref, rtol=1e-6, atol_floor=0, msg="round trip")
