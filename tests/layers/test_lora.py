"""LoRA on the block-diagonal ``HeadwiseLinear`` (``xlstm_lm.layers.lora``), through plain peft.

The adapter is per head, so the adapted layer stays block-diagonal and merges exactly:
merged == unmerged outputs (fp32, 1e-6 relative), unmerge restores the weight, an input
block never reaches another head's outputs. B starts at zero (the adapted layer starts
as the base layer); dropout acts on the adapter input only.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import assert_close
from xlstm_lm.layers.basic import HeadwiseLinear

peft = pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[finetune]'")

from xlstm_lm.layers.lora import HeadwiseLoraLinear, register_headwise_lora  # noqa: E402

# (in, out, heads, r): the paper mLSTM's 4x4 q/k/v blocks with r above the block size,
# the sLSTM's 32x32 gate blocks, and a non-square layer with r below the block size
SHAPES = [
    pytest.param(64, 64, 16, 8, id="in64-out64-H16-r8"),
    pytest.param(128, 128, 4, 8, id="in128-out128-H4-r8"),
    pytest.param(96, 48, 3, 2, id="in96-out48-H3-r2"),
]


class Net(nn.Module):
    def __init__(self, d_in: int, d_out: int, heads: int, bias: bool = False):
        super().__init__()
        self.proj = HeadwiseLinear(d_in, d_out, heads, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def adapted(d_in, d_out, heads, r, bias=False, dropout=0.0, train_b=True, dtype=torch.float32, **config_kw) -> Net:
    torch.manual_seed(0)
    net = Net(d_in, d_out, heads, bias).to(dtype)
    if bias:
        nn.init.normal_(net.proj.bias)
    config = peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules=["proj"], **config_kw)
    net = peft.inject_adapter_in_model(register_headwise_lora(config), net)
    if train_b:
        # a trained adapter: B away from its zero init
        with torch.no_grad():
            net.proj.lora_B["default"].weight.normal_(0.0, 0.5)
    return net.eval()


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-6), (torch.float64, 1e-13)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("d_in,d_out,heads,r", SHAPES)
def test_merged_equals_unmerged_and_unmerge_restores(d_in, d_out, heads, r, bias, dtype, rtol):
    net = adapted(d_in, d_out, heads, r, bias, dtype=dtype)
    layer = net.proj
    assert isinstance(layer, HeadwiseLoraLinear)
    assert layer.lora_A["default"].weight.shape == (heads, r, d_in // heads)
    assert layer.lora_B["default"].weight.shape == (heads, d_out // heads, r)
    assert layer.get_delta_weight("default").shape == layer.get_base_layer().weight.shape
    base_weight = layer.get_base_layer().weight.detach().clone()
    x = torch.randn(3, 5, d_in, dtype=dtype)
    with torch.no_grad():
        unmerged = net(x)
        assert not torch.allclose(unmerged, layer.get_base_layer()(x)), "the adapter changes the output"
        assert layer.lora_A["default"].weight.dtype == dtype
        layer.merge()
        # rounding of B @ A only (fp64: 1e-13)
        assert_close(net(x), unmerged, rtol=rtol, atol_floor=0, msg="merged")
        layer.unmerge()
        assert_close(layer.get_base_layer().weight, base_weight, rtol=rtol, atol_floor=0, msg="unmerged weight")
        assert_close(net(x), unmerged, rtol=rtol, atol_floor=0, msg="unmerged again")


@pytest.mark.parametrize("d_in,d_out,heads,r", SHAPES)
def test_peft_merge_and_unload_gives_the_plain_layer(d_in, d_out, heads, r):
    torch.manual_seed(0)
    config = register_headwise_lora(peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"]))
    model = peft.get_peft_model(Net(d_in, d_out, heads), config)
    with torch.no_grad():
        model.base_model.model.proj.lora_B["default"].weight.normal_(0.0, 0.5)
    x = torch.randn(2, 7, d_in)
    with torch.no_grad():
        unmerged = model(x)
        net = model.merge_and_unload()
        assert type(net.proj) is HeadwiseLinear and list(net.state_dict()) == ["proj.weight"]
        assert net.proj.weight.shape == (heads, d_out // heads, d_in // heads)
        assert_close(net(x), unmerged, rtol=1e-6, atol_floor=0)


def test_adapted_layer_stays_block_diagonal():
    net = adapted(64, 64, 4, 8)
    x = torch.randn(2, 64)
    x2 = x.clone()
    x2[:, :16] += 1.0  # change head 0's input block only
    with torch.no_grad():
        y, y2 = net(x), net(x2)
    assert not torch.equal(y[:, :16], y2[:, :16])
    assert torch.equal(y[:, 16:], y2[:, 16:]), "an input block reached another head's outputs"


def test_fresh_adapter_is_the_base_layer_and_a_is_initialised_per_head():
    net = adapted(128, 128, 4, 8, train_b=False)
    layer = net.proj
    x = torch.randn(2, 3, 128)
    with torch.no_grad():
        assert torch.equal(net(x), layer.get_base_layer()(x))
    a = layer.lora_A["default"].weight
    # peft's nn.Linear(in/H, r) init: Kaiming-uniform with fan-in in/H = 32, bound 1/sqrt(32)
    assert a.abs().max() <= 32**-0.5 and a.abs().max() > 0.9 * 32**-0.5
    assert layer.scaling["default"] == 2.0  # alpha / r


def test_dropout_acts_on_the_adapter_input_only():
    x = torch.randn(4, 9, 64)
    fresh = adapted(64, 64, 4, 8, dropout=0.5, train_b=False).train()
    with torch.no_grad():
        # B = 0: whatever the dropout drops, the output is the base layer's
        assert torch.equal(fresh(x), fresh.proj.get_base_layer()(x))
    net = adapted(64, 64, 4, 8, dropout=0.5).train()
    with torch.no_grad():
        a, b = net(x), net(x)
        assert not torch.equal(a, b), "train mode: dropout on the adapter input"
        net.eval()
        unmerged = net(x)
        assert torch.equal(net(x), unmerged), "eval mode: no dropout"
        net.proj.merge()
        assert_close(net(x), unmerged, rtol=1e-6, atol_floor=0)


def test_only_adapters_train_and_gradients_reach_both_factors():
    net = adapted(64, 64, 4, 8).train()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"proj.lora_A.default.weight", "proj.lora_B.default.weight"}
    net(torch.randn(2, 64)).square().sum().backward()
    for n, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_plain_peft_without_registration_refuses_headwise_layers():
    config = peft.LoraConfig(r=4, target_modules=["proj"])
    with pytest.raises(ValueError, match="not supported"):
        peft.inject_adapter_in_model(config, Net(64, 64, 4))


@pytest.mark.parametrize(
    "option", [dict(use_dora=True), dict(lora_bias=True), dict(init_lora_weights="pissa")],
    ids=["dora", "lora_bias", "pissa"],
)
def test_unsupported_peft_options_are_refused_by_name(option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"{name}=.*not supported on the head-wise layers"):
        adapted(64, 64, 4, 8, **option)
