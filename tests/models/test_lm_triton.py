"""The whole model with kernel_backend='triton' equals kernel_backend='torch'.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from tests.models.test_lm import tiny_model

pytest.importorskip("triton")

SUB = {"mlstm": {"num_heads": 2, "chunk_size": 16}, "mlstm7b": {"num_heads": 2, "chunk_size": 16}}


@pytest.mark.parametrize("pattern", ["mx", "s"], ids=["pattern-mx", "pattern-s"])
def test_triton_model_matches_torch_logits_and_gradients(pattern):
    ref = tiny_model(pattern, dtype=torch.float32, **SUB)
    tri = tiny_model(pattern, dtype=torch.float32, kernel_backend="triton", **SUB)
    tri.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 37, (2, 40))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[0, :9] = 0  # left padding goes through the kernels as -inf/+inf gates
    outs = {}
    for name, model in (("torch", ref), ("triton", tri)):
        out = model(ids, labels=ids.masked_fill(mask == 0, -100), attention_mask=mask)
        out.loss.backward()
        outs[name] = out
    # fp32 kernels against fp32 references: rounding differences only
    assert_close(outs["triton"].logits, outs["torch"].logits, rtol=1e-4, atol_floor=0.0)
    for (name, a), (_, b) in zip(tri.named_parameters(), ref.named_parameters()):
        assert_close(a.grad, b.grad, rtol=1e-4, atol_floor=1e-7, msg=name)


@pytest.mark.parametrize("pattern", ["mx", "s"], ids=["pattern-mx", "pattern-s"])
def test_triton_decode_step_continues_prefill(pattern):
    ref = tiny_model(pattern, dtype=torch.float32, **SUB)
    tri = tiny_model(pattern, dtype=torch.float32, kernel_backend="triton", **SUB)
    tri.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 37, (2, 8))
    with torch.no_grad():
        state = tri(ids[:, :5]).state
        steps = []
        for t in range(5, 8):
            out = tri(ids[:, t : t + 1], state)  # fused Triton decode steps (no grad)
            state = out.state
            steps.append(out.logits)
        expected = ref(ids).logits[:, 5:]
    assert_close(torch.cat(steps, 1), expected, rtol=1e-4, atol_floor=0.0)
