"""Round trip with transformers' built-in xLSTM (``model_type: "xlstm"``, ``xLSTMForCausalLM``).

That model is the Hugging Face port of the xLSTM-7B architecture, i.e. our
``mlstm7b`` blocks with RMSNorm. ``to_hf_xlstm`` turns such an ``XLSTMLM`` into a
built-in model (loadable with ``AutoModelForCausalLM.from_pretrained(dir)`` and no
remote code); ``from_hf_xlstm`` loads a built-in model (either ``weight_mode``) into
``XLSTMLM``. The built-in model is configured with its native PyTorch kernels
(chunkwise / recurrent-sequence / recurrent-step), so it runs on CPU.

Weight names (ours -> built-in ``xLSTMForCausalLM``)::

    embedding                      backbone.embeddings
    blocks.i.norm                  backbone.blocks.i.norm_mlstm
    blocks.i.mlstm.{q,k,v}         backbone.blocks.i.mlstm_layer.{q,k,v}
    blocks.i.mlstm.ogate           backbone.blocks.i.mlstm_layer.ogate_preact
    blocks.i.mlstm.{i,f}gate       backbone.blocks.i.mlstm_layer.{i,f}gate_preact
    blocks.i.mlstm.out_norm        backbone.blocks.i.mlstm_layer.multihead_norm
    blocks.i.mlstm.out_proj        backbone.blocks.i.mlstm_layer.out_proj
    blocks.i.ffn_norm              backbone.blocks.i.norm_ffn
    blocks.i.ffn.{gate,up,down}    backbone.blocks.i.ffn.{proj_up_gate,proj_up,proj_down}
    final_norm                     backbone.out_norm
    lm_head                        lm_head

('fused' checkpoints hold q|k|v|ogate in ``qkv_opreact``, igate|fgate in
``ifgate_preact`` and gate|up in ``proj_up_gate_z``; they are split on import.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import MLSTM7BConfig, ModelConfig, round_up
from ..config_utils import ConfigError
from ..models import XLSTMLM

#: The built-in xLSTM's kernel settings that run anywhere (pure PyTorch).
NATIVE_KERNELS = dict(
    chunkwise_kernel="chunkwise--native_autograd",
    sequence_kernel="native_sequence__native",
    step_kernel="native",
    mode="inference",
)

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class NativeFormatError(ConfigError):
    """The model cannot be expressed in transformers' built-in xLSTM format (or back)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise NativeFormatError(message)


def check_expressible(cfg: ModelConfig) -> None:
    """Raise ``NativeFormatError`` unless transformers' xLSTM computes the same function."""
    kinds = sorted(set(cfg.block_kinds))
    _require(
        kinds == ["mlstm7b"],
        f"the built-in xLSTM format has only xLSTM-7B blocks; this model has {kinds} "
        "(use the remote-code export, tools/export_hf.py, for other backbones)",
    )
    _require(cfg.norm == "rmsnorm", f"the built-in xLSTM uses RMSNorm; this model has norm={cfg.norm!r}")
    _require(cfg.final_norm, "the built-in xLSTM always applies a final norm; this model has final_norm=false")
    _require(
        not cfg.bias,
        "bias=true is not expressible: the built-in xLSTM then also gives its norms a bias, which this model lacks",
    )
    m = cfg.mlstm7b
    _require(m.gate_soft_cap is not None, "the built-in xLSTM needs a gate soft cap (mlstm7b.gate_soft_cap is null)")
    _require(cfg.logit_soft_cap is not None, "the built-in xLSTM needs an output logit soft cap (logit_soft_cap is null)")
    for name, dim in (("q/k", cfg.mlstm7b_qk_dim), ("v", cfg.mlstm7b_v_dim)):
        _require(
            round_up(dim, 64) == dim,
            f"the {name} dim {dim} (d_model * mlstm7b.{'qk' if name == 'q/k' else 'v'}_dim_factor) is not a multiple "
            "of 64: transformers' xLSTMCache sizes its states with that dim rounded up to 64, so generation would fail",
        )


def hf_xlstm_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32, **token_ids):
    """``transformers.xLSTMConfig`` equivalent to ``cfg`` (checked with ``check_expressible``)."""
    from transformers import xLSTMConfig

    check_expressible(cfg)
    m = cfg.mlstm7b
    return xLSTMConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.num_blocks,
        num_heads=m.num_heads,
        use_bias=False,
        norm_reduction_force_float32=True,
        tie_word_embeddings=False,
        add_out_norm=True,
        norm_eps=cfg.norm_eps,
        qk_dim_factor=m.qk_dim_factor,
        v_dim_factor=m.v_dim_factor,
        chunk_size=m.chunk_size,
        # kernels compute in the weights' dtype (fp32 weights: exact parity)
        autocast_kernel_dtype=_DTYPE_NAMES.get(dtype, "float32"),
        inference_state_dtype="float32",
        eps=m.eps,
        ffn_proj_factor=m.ffn_proj_factor,
        ffn_round_up_to_multiple_of=m.ffn_round_to,
        gate_soft_cap=m.gate_soft_cap,
        output_logit_soft_cap=cfg.logit_soft_cap,
        weight_mode="single",
        **NATIVE_KERNELS,
        **token_ids,
    )


def model_config_from_hf(hf_cfg) -> ModelConfig:
    """``ModelConfig`` equivalent to a ``transformers.xLSTMConfig``."""
    _require(
        not hf_cfg.use_bias,
        "use_bias=true is not supported: the built-in xLSTM then puts biases on its norms, which XLSTMLM's "
        "xLSTM-7B blocks do not have",
    )
    return ModelConfig(
        vocab_size=hf_cfg.vocab_size,
        d_model=hf_cfg.hidden_size,
        num_blocks=hf_cfg.num_hidden_layers,
        block="mlstm7b",
        norm="rmsnorm",
        norm_eps=hf_cfg.norm_eps,
        final_norm=True,
        tie_embeddings=False,
        bias=False,
        logit_soft_cap=hf_cfg.output_logit_soft_cap,
        mlstm7b=MLSTM7BConfig(
            num_heads=hf_cfg.num_heads,
            qk_dim_factor=hf_cfg.qk_dim_factor,
            v_dim_factor=hf_cfg.v_dim_factor,
            gate_soft_cap=hf_cfg.gate_soft_cap,
            ffn_proj_factor=hf_cfg.ffn_proj_factor,
            ffn_round_to=hf_cfg.ffn_round_up_to_multiple_of,
            chunk_size=hf_cfg.chunk_size,
            eps=hf_cfg.eps,
        ),
    )


def _block_pairs(i: int) -> list[tuple[str, str]]:
    """(our name, built-in name) of every weight of block ``i`` ('single' weight mode)."""
    ours, theirs = f"blocks.{i}", f"backbone.blocks.{i}"
    layer = [("q", "q"), ("k", "k"), ("v", "v"), ("ogate", "ogate_preact"), ("igate", "igate_preact"),
             ("fgate", "fgate_preact"), ("out_norm", "multihead_norm"), ("out_proj", "out_proj")]
    ffn = [("gate", "proj_up_gate"), ("up", "proj_up"), ("down", "proj_down")]
    pairs = [(f"{ours}.norm.weight", f"{theirs}.norm_mlstm.weight"), (f"{ours}.ffn_norm.weight", f"{theirs}.norm_ffn.weight")]
    for a, b in layer:
        pairs.append((f"{ours}.mlstm.{a}.weight", f"{theirs}.mlstm_layer.{b}.weight"))
        if a in ("igate", "fgate"):
            pairs.append((f"{ours}.mlstm.{a}.bias", f"{theirs}.mlstm_layer.{b}.bias"))
    pairs += [(f"{ours}.ffn.{a}.weight", f"{theirs}.ffn.{b}.weight") for a, b in ffn]
    return pairs


def name_pairs(num_blocks: int) -> list[tuple[str, str]]:
    """(our name, built-in name) of every weight. The built-in model keeps
    ``xlstm.xlstm_large`` names except ``embedding.weight`` -> ``backbone.embeddings.weight``."""
    pairs = [("embedding.weight", "backbone.embeddings.weight"), ("final_norm.weight", "backbone.out_norm.weight"),
             ("lm_head.weight", "lm_head.weight")]
    for i in range(num_blocks):
        pairs += _block_pairs(i)
    return pairs


def unfuse_weights(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """'fused' weights (built-in or ``xLSTMLarge``, same names) -> the 'single' names."""
    out = dict(sd)
    qk, v, H, ffn = cfg.mlstm7b_qk_dim, cfg.mlstm7b_v_dim, cfg.mlstm7b.num_heads, cfg.mlstm7b_ffn_dim
    for i in range(cfg.num_blocks):
        p = f"backbone.blocks.{i}"
        q_, k_, v_, o_ = out.pop(f"{p}.mlstm_layer.qkv_opreact.weight").split([qk, qk, v, v], dim=0)
        out.update({f"{p}.mlstm_layer.q.weight": q_, f"{p}.mlstm_layer.k.weight": k_,
                    f"{p}.mlstm_layer.v.weight": v_, f"{p}.mlstm_layer.ogate_preact.weight": o_})
        wi, wf = out.pop(f"{p}.mlstm_layer.ifgate_preact.weight").split(H, dim=0)
        bi, bf = out.pop(f"{p}.mlstm_layer.ifgate_preact.bias").split(H)
        out.update({f"{p}.mlstm_layer.igate_preact.weight": wi, f"{p}.mlstm_layer.fgate_preact.weight": wf,
                    f"{p}.mlstm_layer.igate_preact.bias": bi, f"{p}.mlstm_layer.fgate_preact.bias": bf})
        g, z = out.pop(f"{p}.ffn.proj_up_gate_z.weight").split(ffn, dim=0)
        out.update({f"{p}.ffn.proj_up_gate.weight": g, f"{p}.ffn.proj_up.weight": z})
    return out


@torch.no_grad()
def to_hf_xlstm(model: XLSTMLM, **token_ids):
    """A built-in ``transformers.xLSTMForCausalLM`` computing the same logits as ``model``."""
    from transformers import xLSTMForCausalLM

    dtype = model.embedding.weight.dtype
    hf = xLSTMForCausalLM(hf_xlstm_config(model.config, dtype, **token_ids)).to(dtype).eval()
    ours = model.state_dict()
    theirs = {b: ours[a].clone() for a, b in name_pairs(model.config.num_blocks)}
    missing, unexpected = hf.load_state_dict(theirs, strict=False)
    if missing or unexpected:
        raise NativeFormatError(f"weight mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return hf


@torch.no_grad()
def from_hf_xlstm(hf_model) -> XLSTMLM:
    """An ``XLSTMLM`` with the weights of a built-in ``xLSTMForCausalLM`` ('single' or 'fused')."""
    hf_cfg = hf_model.config
    cfg = model_config_from_hf(hf_cfg)
    sd = dict(hf_model.state_dict())
    if hf_cfg.weight_mode == "fused":
        sd = unfuse_weights(sd, cfg)
    model = XLSTMLM(cfg).to(hf_model.lm_head.weight.dtype)
    pairs = name_pairs(cfg.num_blocks)
    used = {b for _, b in pairs}
    extra = sorted(set(sd) - used)
    if extra:
        raise NativeFormatError(f"the built-in checkpoint has weights XLSTMLM cannot hold: {extra[:6]}")
    missing, unexpected = model.load_state_dict({a: sd[b] for a, b in pairs}, strict=False)
    if missing or unexpected:
        raise NativeFormatError(f"weight mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def export_native(model: XLSTMLM, out_dir: str | Path, tokenizer=None) -> Path:
    """Save ``model`` in the built-in format (``config.json`` with ``model_type: "xlstm"``)."""
    eos = getattr(tokenizer, "eos_id", None)
    hf = to_hf_xlstm(model, bos_token_id=None, eos_token_id=eos, pad_token_id=eos)
    hf.save_pretrained(out_dir)
    return Path(out_dir)


def load_native(path: str | Path, dtype: torch.dtype | None = None) -> XLSTMLM:
    """Load a built-in ``xlstm`` checkpoint folder (or hub id) into ``XLSTMLM``."""
    from transformers import AutoConfig, xLSTMForCausalLM

    config = AutoConfig.from_pretrained(path)
    if config.model_type != "xlstm":
        raise NativeFormatError(f"{path} holds model_type {config.model_type!r}, not transformers' built-in 'xlstm'")
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return from_hf_xlstm(xLSTMForCausalLM.from_pretrained(path, **kwargs))


__all__ = [
    "NATIVE_KERNELS",
    "NativeFormatError",
    "check_expressible",
    "export_native",
    "from_hf_xlstm",
    "hf_xlstm_config",
    "load_native",
    "model_config_from_hf",
    "to_hf_xlstm",
]
