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


def _copy_linear(dst: torch.nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    dst.weight.copy_(weight)
    if dst.bias is not None:
        dst.bias.copy_(bias)


@torch.no_grad()
def from_xlstm_large(ref) -> XLSTMLM:
    """Build an ``XLSTMLM`` with the weights of an ``xlstm.xlstm_large.xLSTMLarge``
    (either weight_mode, 'single' or 'fused')."""
    rc = ref.config
    cfg = config_from_xlstm_large(rc)
    model = XLSTMLM(cfg)
    model.to(ref.embedding.weight.dtype)
    model.embedding.weight.copy_(ref.embedding.weight)
    model.lm_head.weight.copy_(ref.lm_head.weight)
    if cfg.final_norm:
        _copy_norm(model.final_norm, ref.backbone.out_norm)
    qk, v = cfg.mlstm7b_qk_dim, cfg.mlstm7b_v_dim
    H = cfg.mlstm7b.num_heads
    for ours, theirs in zip(model.blocks, ref.backbone.blocks):
        _copy_norm(ours.norm, theirs.norm_mlstm)
        _copy_norm(ours.ffn_norm, theirs.norm_ffn)
        lo, lt = ours.mlstm, theirs.mlstm_layer
        if rc.weight_mode == "single":
            for a, b in (("q", "q"), ("k", "k"), ("v", "v"), ("ogate", "ogate_preact"), ("igate", "igate_preact"), ("fgate", "fgate_preact")):
                src = getattr(lt, b)
                _copy_linear(getattr(lo, a), src.weight, src.bias)
            _copy_linear(ours.ffn.gate, theirs.ffn.proj_up_gate.weight, theirs.ffn.proj_up_gate.bias)
            _copy_linear(ours.ffn.up, theirs.ffn.proj_up.weight, theirs.ffn.proj_up.bias)
        else:
            sizes = [qk, qk, v, v]
            ws = lt.qkv_opreact.weight.split(sizes, dim=0)
            bs = lt.qkv_opreact.bias.split(sizes) if lt.qkv_opreact.bias is not None else [None] * 4
            for name, w, b in zip(("q", "k", "v", "ogate"), ws, bs):
                _copy_linear(getattr(lo, name), w, b)
            wi, wf = lt.ifgate_preact.weight.split(H, dim=0)
            bi, bf = lt.ifgate_preact.bias.split(H)
            _copy_linear(lo.igate, wi, bi)
            _copy_linear(lo.fgate, wf, bf)
            up = theirs.ffn.up_proj_dim
            wg, wz = theirs.ffn.proj_up_gate_z.weight.split(up, dim=0)
            b = theirs.ffn.proj_up_gate_z.bias
            bg, bz = b.split(up) if b is not None else (None, None)
            _copy_linear(ours.ffn.gate, wg, bg)
            _copy_linear(ours.ffn.up, wz, bz)
        _copy_norm(lo.out_norm, lt.multihead_norm)
        _copy_linear(lo.out_proj, lt.out_proj.weight, lt.out_proj.bias)
        _copy_linear(ours.ffn.down, theirs.ffn.proj_down.weight, theirs.ffn.proj_down.bias)
    return model


def _copy_norm(dst, src) -> None:
    if dst.weight is not None:
        dst.weight.copy_(src.weight)
    if dst.bias is not None:
        dst.bias.copy_(src.bias)
