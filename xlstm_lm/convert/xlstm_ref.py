"""Load models of the reference ``xlstm`` package (PyPI) into ``XLSTMLM``.

- ``from_xlstm_lm_model``: the paper's ``xlstm.xLSTMLMModel`` (mLSTM + sLSTM blocks).
- ``from_xlstm_large``: ``xlstm.xlstm_large.xLSTMLarge`` (the xLSTM-7B architecture).

Both build the matching ``ModelConfig`` and copy every weight, converting the
reference's conventions: its LayerNorms store ``weight - 1`` (applied as
``1 + weight``), its sLSTM layer feeds the module named ``fgate`` into the input
gate slot and ``igate`` into the forget gate slot, and its fused projections are
split into ours. The ``xlstm`` package is only needed to call these functions.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..models import XLSTMLM


def _ffn_act(name: str) -> str:
    return {"gelu": "gelu", "swish": "swish", "relu": "relu"}[name]


def config_from_xlstm_lm_model(ref_cfg) -> ModelConfig:
    """``ModelConfig`` equivalent to an ``xlstm.xLSTMLMModelConfig``."""
    kinds = ["s" if b == 1 else "m" for b in ref_cfg.block_map]
    mcfg = ref_cfg.mlstm_block.mlstm if ref_cfg.mlstm_block is not None else None
    scfg = ref_cfg.slstm_block.slstm if ref_cfg.slstm_block is not None else None
    ffn = ref_cfg.slstm_block.feedforward if ref_cfg.slstm_block is not None else None
    data: dict = dict(
        vocab_size=ref_cfg.vocab_size,
        d_model=ref_cfg.embedding_dim,
        num_blocks=ref_cfg.num_blocks,
        pattern="".join(kinds),
        norm="layernorm",
        norm_eps=1e-5,
        final_norm=ref_cfg.add_post_blocks_norm,
        tie_embeddings=ref_cfg.tie_weights,
        bias=ref_cfg.bias,
        dropout=ref_cfg.dropout,
        embedding_dropout=ref_cfg.add_embedding_dropout,
    )
    from ..config import MLSTMConfig, SLSTMConfig

    if mcfg is not None:
        data["mlstm"] = MLSTMConfig(
            num_heads=mcfg.num_heads,
            proj_factor=mcfg.proj_factor,
            round_to=mcfg.round_proj_up_to_multiple_of,
            conv_kernel=mcfg.conv1d_kernel_size,
            qkv_blocksize=mcfg.qkv_proj_blocksize,
        )
    if scfg is not None:
        if ffn is None:
            raise ValueError("sLSTM blocks without a feed-forward are not supported by the converter")
        data["slstm"] = SLSTMConfig(
            num_heads=scfg.num_heads,
            conv_kernel=scfg.conv1d_kernel_size,
            bias_init=scfg.bias_init,
            recurrent_weight_init=scfg.recurrent_weight_init,
            ffn_proj_factor=ffn.proj_factor,
            ffn_act=_ffn_act(ffn.act_fn),
            round_to=ffn.round_proj_up_to_multiple_of,
        )
        if scfg.function != "slstm":
            raise ValueError(f"only the 'slstm' cell function is supported, got {scfg.function!r}")
    return ModelConfig(**data)


@torch.no_grad()
def from_xlstm_lm_model(ref) -> XLSTMLM:
    """Build an ``XLSTMLM`` with the weights of an ``xlstm.xLSTMLMModel``."""
    cfg = config_from_xlstm_lm_model(ref.config)
    model = XLSTMLM(cfg)
    model.to(ref.token_embedding.weight.dtype)
    model.embedding.weight.copy_(ref.token_embedding.weight)
    if not cfg.tie_embeddings:
        model.lm_head.weight.copy_(ref.lm_head.weight)
    if cfg.final_norm:
        model.final_norm.weight.copy_(1.0 + ref.xlstm_block_stack.post_blocks_norm.weight)
    for ours, theirs in zip(model.blocks, ref.xlstm_block_stack.blocks):
        ours.norm.weight.copy_(1.0 + theirs.xlstm_norm.weight)
        layer = theirs.xlstm
        if hasattr(ours, "mlstm"):
            o = ours.mlstm
            o.proj_up.weight.copy_(layer.proj_up.weight)
            o.proj_down.weight.copy_(layer.proj_down.weight)
            if o.proj_up.bias is not None:
                o.proj_up.bias.copy_(layer.proj_up.bias)
                o.proj_down.bias.copy_(layer.proj_down.bias)
            for name in ("q_proj", "k_proj", "v_proj"):
                getattr(o, name).weight.copy_(getattr(layer, name).weight)
                if getattr(o, name).bias is not None:
                    getattr(o, name).bias.copy_(getattr(layer, name).bias)
            if o.conv is not None:
                o.conv.weight.copy_(layer.conv1d.conv.weight)
                o.conv.bias.copy_(layer.conv1d.conv.bias)
            cell = layer.mlstm_cell
            o.igate.weight.copy_(cell.igate.weight)
            o.igate.bias.copy_(cell.igate.bias)
            o.fgate.weight.copy_(cell.fgate.weight)
            o.fgate.bias.copy_(cell.fgate.bias)
            o.out_norm.weight.copy_(1.0 + cell.outnorm.weight)
            o.learnable_skip.copy_(layer.learnable_skip)
        else:
            o = ours.slstm
            if o.conv is not None:
                o.conv.weight.copy_(layer.conv1d.conv.weight)
                o.conv.bias.copy_(layer.conv1d.conv.bias)
            # The reference computes its input-gate slot with the module named fgate and
            # its forget-gate slot with igate (sLSTMLayer.forward); keep the function.
            o.igate.weight.copy_(layer.fgate.weight)
            o.fgate.weight.copy_(layer.igate.weight)
            o.zgate.weight.copy_(layer.zgate.weight)
            o.ogate.weight.copy_(layer.ogate.weight)
            cell = layer.slstm_cell
            o.recurrent_kernel.copy_(cell._recurrent_kernel_int2ext(cell._recurrent_kernel_))
            o.bias.copy_(cell._bias_int2ext(cell._bias_))
            o.out_norm.weight.copy_(1.0 + layer.group_norm.weight)
            ours.ffn_norm.weight.copy_(1.0 + theirs.ffn_norm.weight)
            gate, up = theirs.ffn.proj_up.weight.chunk(2, dim=0)
            ours.ffn.gate.weight.copy_(gate)
            ours.ffn.up.weight.copy_(up)
            ours.ffn.down.weight.copy_(theirs.ffn.proj_down.weight)
    return model


def config_from_xlstm_large(ref_cfg) -> ModelConfig:
    """``ModelConfig`` equivalent to an ``xlstm.xlstm_large.xLSTMLargeConfig``."""
    from ..config import MLSTM7BConfig

    return ModelConfig(
        vocab_size=ref_cfg.vocab_size,
        d_model=ref_cfg.embedding_dim,
        num_blocks=ref_cfg.num_blocks,
        block="mlstm7b",
        norm="rmsnorm",
        norm_eps=ref_cfg.norm_eps,
        final_norm=ref_cfg.add_out_norm,
        tie_embeddings=False,
        bias=ref_cfg.use_bias,
        logit_soft_cap=ref_cfg.output_logit_soft_cap,
        mlstm7b=MLSTM7BConfig(
            num_heads=ref_cfg.num_heads,
            qk_dim_factor=ref_cfg.qk_dim_factor,
            v_dim_factor=ref_cfg.v_dim_factor,
            gate_soft_cap=ref_cfg.gate_soft_cap,
            ffn_proj_factor=ref_cfg.ffn_proj_factor,
            ffn_round_to=ref_cfg.ffn_round_up_to_multiple_of,
            chunk_size=ref_cfg.chunk_size,
            eps=ref_cfg.eps,
        ),
    )


@torch.no_grad()
def from_xlstm_large(ref) -> XLSTMLM:
    """Build an ``XLSTMLM`` with the weights of an ``xlstm.xlstm_large.xLSTMLarge``
    (either weight_mode, 'single' or 'fused').

    transformers' built-in xLSTM keeps the same weight names (but the embedding's), so
    the name mapping of ``hf_native`` serves both.
    """
    from .hf_native import name_pairs, unfuse_weights

    rc = ref.config
    if rc.use_bias:
        raise ValueError(
            "xLSTMLarge with use_bias=True puts biases on its norms, which XLSTMLM's xLSTM-7B blocks do not have"
        )
    cfg = config_from_xlstm_large(rc)
    model = XLSTMLM(cfg).to(ref.embedding.weight.dtype)
    sd = dict(ref.state_dict())
    sd["backbone.embeddings.weight"] = sd.pop("embedding.weight")
    if rc.weight_mode == "fused":
        sd = unfuse_weights(sd, cfg)
    ours = model.state_dict()
    # without add_out_norm there is no final norm on either side
    model.load_state_dict({a: sd[b] for a, b in name_pairs(cfg.num_blocks) if a in ours}, strict=True)
    return model
