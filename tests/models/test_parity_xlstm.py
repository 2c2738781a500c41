"""Parity with the paper's reference code, the ``xlstm`` package (PyPI), on CPU.

The reference models run with the vanilla sLSTM backend and the native PyTorch
mLSTM kernels of ``mlstm_kernels``. Our converters copy their weights; logits must
agree to 1e-5 relative (fp32). Every parameter is perturbed first so that
zero-initialised paths (sLSTM recurrent weights, gate weights) are exercised.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close

xlstm = pytest.importorskip("xlstm", reason="the reference package is in the dev extra: pip install -e '.[dev]'")

from xlstm_lm.convert.xlstm_ref import from_xlstm_large, from_xlstm_lm_model  # noqa: E402


def _perturb(module: torch.nn.Module, scale: float = 0.1) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _paper_model(slstm_at, num_blocks, ffn_act="gelu", tie=False, conv=4):
    from xlstm import (
        FeedForwardConfig,
        mLSTMBlockConfig,
        mLSTMLayerConfig,
        sLSTMBlockConfig,
        sLSTMLayerConfig,
        xLSTMLMModel,
        xLSTMLMModelConfig,
    )

    cfg = xLSTMLMModelConfig(
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(conv1d_kernel_size=conv, qkv_proj_blocksize=4, num_heads=4)),
        slstm_block=sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(backend="vanilla", num_heads=4, conv1d_kernel_size=conv, bias_init="powerlaw_blockdependent"),
            feedforward=FeedForwardConfig(proj_factor=1.3, act_fn=ffn_act),
        ),
        context_length=64,
        num_blocks=num_blocks,
        embedding_dim=64,
        slstm_at=slstm_at,
        vocab_size=97,
        tie_weights=tie,
    )
    model = xLSTMLMModel(cfg)
    model.reset_parameters()
    _perturb(model)
    return model.eval()


@pytest.mark.parametrize(
    "slstm_at,num_blocks,ffn_act,tie,conv",
    [
        pytest.param([1], 4, "gelu", False, 4, id="xLSTM[3:1]-gelu"),
        pytest.param([0, 2], 3, "swish", True, 4, id="xLSTM[1:2]-swish-tied"),
        pytest.param([], 2, "gelu", False, 2, id="xLSTM[1:0]-conv2"),
        pytest.param("all", 2, "gelu", False, 4, id="xLSTM[0:1]"),
    ],
)
def test_xlstm_lm_model_logits_match(slstm_at, num_blocks, ffn_act, tie, conv):
    torch.manual_seed(0)
    ref = _paper_model(slstm_at, num_blocks, ffn_act, tie, conv)
    ours = from_xlstm_lm_model(ref).eval()
    ids = torch.randint(0, 97, (2, 50))
    with torch.no_grad():
        expected = ref(ids)
        got = ours(ids).logits
    assert_close(got, expected, rtol=1e-5, atol_floor=0.0)


def test_xlstm_lm_model_stepwise_matches_reference_step():
    """Our token-by-token decoding equals the reference model's own ``step``."""
    torch.manual_seed(1)
    ref = _paper_model([1], 2)
    ours = from_xlstm_lm_model(ref).eval()
    ids = torch.randint(0, 97, (1, 12))
    ref_state, our_state, ref_logits, our_logits = None, None, [], []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            logits, ref_state = ref.step(ids[:, t : t + 1], ref_state)
            ref_logits.append(logits)
            out = ours(ids[:, t : t + 1], our_state)
            our_state = out.state
            our_logits.append(out.logits)
    assert_close(torch.cat(our_logits, 1), torch.cat(ref_logits, 1), rtol=1e-5, atol_floor=0.0)


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
@pytest.mark.parametrize("seq_len", [48, 37], ids=["T48", "T37"])
def test_xlstm_large_logits_match(weight_mode, seq_len):
    from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig

    torch.manual_seed(0)
    cfg = xLSTMLargeConfig(
        embedding_dim=64,
        num_heads=4,
        num_blocks=2,
        vocab_size=97,
        chunkwise_kernel="chunkwise--native_autograd",
        sequence_kernel="native_sequence__native",
        step_kernel="native",
        # The reference's 'train' mode needs T to be a multiple of the chunk; its
        # 'inference' mode runs chunkwise over the multiple and steps the remainder.
        mode="train" if seq_len % 16 == 0 else "inference",
        chunk_size=16,
        return_last_states=True,
        autocast_kernel_dtype="float32",
        weight_mode=weight_mode,
    )
    ref = xLSTMLarge(cfg)
    _perturb(ref)
    ref.eval()
    ours = from_xlstm_large(ref).eval()
    ids = torch.randint(0, 97, (2, seq_len))
    with torch.no_grad():
        expected = ref(ids)
        expected = expected[0] if isinstance(expected, tuple) else expected
        got = ours(ids).logits
    assert_close(got, expected, rtol=1e-5, atol_floor=0.0)


def test_converted_config_round_trips_through_dict():
    from xlstm_lm.config import ModelConfig
    from xlstm_lm.config_utils import from_dict, to_dict

    torch.manual_seed(0)
    ours = from_xlstm_lm_model(_paper_model([1], 2))
    assert from_dict(ModelConfig, to_dict(ours.config)) == ours.config
