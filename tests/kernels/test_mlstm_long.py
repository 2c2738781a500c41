"""bf16 at T = 65,536 stays finite (forward and backward) in the Triton chunkwise kernel.

Under the CPU interpreter this one case takes ~4.5 minutes (measured 268 s for
forward+backward at B=1, H=1, D=16, chunk 256), so it runs where a GPU is present;
CPU CI covers long sequences with the 16,384-step test in test_mlstm_ref.py.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="T=65,536 takes minutes under the Triton interpreter; runs on GPU")
@pytest.mark.parametrize("chunk", [64, 128], ids=["C64", "C128"])
def test_bf16_65536_tokens_finite(chunk):
    from xlstm_lm_kernels.mlstm import mlstm_chunkwise_triton

    T, dev = 65_536, torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    q, k = (torch.randn(2, 4, T, 128, device=dev, generator=g).bfloat16() for _ in range(2))
    v = torch.randn(2, 4, T, 256, device=dev, generator=g).bfloat16()
    i = (5 * torch.randn(2, 4, T, device=dev, generator=g)).bfloat16()
    f = (2 + 3 * torch.randn(2, 4, T, device=dev, generator=g)).bfloat16()
    leaves = [x.requires_grad_() for x in (q, k, v, i, f)]
    h, state = mlstm_chunkwise_triton(*leaves, return_last_state=True, chunk_size=chunk)
    assert torch.isfinite(h).all() and all(torch.isfinite(s).all() for s in state)
    (h.float().sum() + state.C.sum()).backward()
    for name, x in zip("qkvif", leaves):
        assert torch.isfinite(x.grad).all(), f"d{name} not finite"
