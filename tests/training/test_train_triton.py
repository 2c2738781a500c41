"""The training job runs with the Triton kernels (on CPU: under TRITON_INTERPRET=1)
and follows the same loss curve as the PyTorch reference kernels."""

from __future__ import annotations

import math

import pytest

from tests.training.test_train import tiny_raw
from xlstm_lm.training import train

pytest.importorskip("triton")


def test_model_trains_with_triton_backend(tmp_path):
    steps = ["train.max_steps=4", "train.eval_every=4", "train.save_every=4", "train.sample_tokens=4", "model.mlstm.chunk_size=16"]
    tri = train(tiny_raw(tmp_path / "triton", *steps, "model.kernel_backend=triton"), progress=False)
    ref = train(tiny_raw(tmp_path / "torch", *steps, "model.kernel_backend=torch"), progress=False)
    assert tri.step == 4 and all(map(math.isfinite, tri.train_losses))
    # same data, same init: fp32 kernels differ only by rounding, which AdamW amplifies a little
    for a, b in zip(tri.train_losses, ref.train_losses):
        assert a == pytest.approx(b, rel=1e-3)
