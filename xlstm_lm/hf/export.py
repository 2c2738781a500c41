"""Export a training checkpoint as a self-contained Hugging Face model folder.

``export_checkpoint(run_dir_or_checkpoint, out_dir)`` writes:

* ``config.json`` (``XLSTMLMConfig`` with ``auto_map``) and ``generation_config.json``;
* ``model.safetensors`` (tied embeddings stored once);
* the modeling code as flat modules (``modeling_xlstm_lm.py`` and what it imports,
  see ``bundle``), so ``AutoModelForCausalLM.from_pretrained(out_dir,
  trust_remote_code=True)`` works where xlstm_lm is not installed;
* tokenizer files: byte -> a ``tokenizers`` byte model (``tokenizer.json``, no
  remote code); sentencepiece -> the ``.model`` file with ``tokenization_xlstm_lm.py``
  (remote code, exact ids); Hugging Face -> its own ``save_pretrained`` files;
* the chat template of a model fine-tuned with ``data.sft`` (``chat_template.jinja``):
  the run's ``simple`` / ``plain`` format written as Jinja, or the Hugging Face
  tokenizer's own template, so ``apply_chat_template(messages, add_generation_prompt=True)``
  gives the token ids the model was trained on (see ``sft_chat_template``);
* ``README.md``: a model card (architecture, parameters, training data, validation
  perplexity from the run's ``metrics.jsonl`` when present).

Exported models run the PyTorch reference kernels (``kernel_backend='torch'``):
the Triton kernels are not shipped.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..config import BLOCK_LETTERS, ModelConfig
from ..config_utils import ConfigError
from ..data.sft import ChatFormatter
from ..data.tokenizers import ByteTokenizer, HFTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer
from ..training import checkpoint as ckpt_io
from .bundle import ENTRY_MODULES, write_bundle
from .configuration import XLSTMLMConfig, validated_model_config
from .modeling import XLSTMLMForCausalLM
from .zero import ZeroError, consolidate_run, find_deepspeed_checkpoint

AUTO_MAP = {
    "AutoConfig": f"{ENTRY_MODULES['xlstm_lm.hf.configuration']}.XLSTMLMConfig",
    "AutoModelForCausalLM": f"{ENTRY_MODULES['xlstm_lm.hf.modeling']}.XLSTMLMForCausalLM",
}
SP_TOKENIZER_MODULE = "tokenization_xlstm_lm"


class ExportError(ckpt_io.CheckpointError):
    """The checkpoint cannot be exported; the message says what is missing or wrong."""


def _checkpoint_step(ckpt: Path) -> int | None:
    try:
        return int(ckpt.name.split("_")[-1])
    except ValueError:
        return None


def read_val_metrics(ckpt: Path) -> dict[str, Any] | None:
    """The last validation record at or before the checkpoint's step (run_dir/metrics.jsonl)."""
    path = ckpt.parent.parent / "metrics.jsonl"
    if not path.is_file():
        return None
    step = _checkpoint_step(ckpt)
    best, baseline = None, None
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("split") != "val":
            continue
        if rec.get("kind") == "unigram_baseline":
            baseline = rec.get("ppl")
        elif "ppl" in rec and (step is None or rec.get("step", 0) <= step):
            best = rec
    if best is None:
        return None
    return {**best, "unigram_baseline_ppl": baseline}


# --- model ---------------------------------------------------------------------------
def hf_config_for(model_cfg: ModelConfig, tokenizer: Tokenizer | None) -> XLSTMLMConfig:
    eos = tokenizer.eos_id if tokenizer is not None else None
    return XLSTMLMConfig(model=model_cfg, eos_token_id=eos, pad_token_id=eos, bos_token_id=None)


def load_checkpoint_as_hf(
    path: str | Path, tokenizer: str | Path | None = None, tag: str | None = None
) -> tuple[XLSTMLMForCausalLM, Tokenizer, Path, dict[str, Any]]:
    """``(model, tokenizer, checkpoint folder, run config)`` of a run dir or checkpoint.

    A DeepSpeed run (its run dir, ``deepspeed/`` folder or one tag folder) is
    consolidated first (``zero.consolidate_run``: ``tag`` None is the latest; the
    tokenizer is found with the run's shards unless ``tokenizer`` names it); the
    returned checkpoint folder is then the DeepSpeed tag folder.
    """
    try:
        ds = find_deepspeed_checkpoint(path, tag)
        if ds is not None:
            with tempfile.TemporaryDirectory() as tmp:
                model, tok, _, run_cfg = load_checkpoint_as_hf(consolidate_run(ds.path, tmp, tokenizer=tokenizer))
            return model, tok, ds.path, run_cfg
    except ZeroError as e:
        raise ExportError(str(e)) from None
    try:
        ckpt = ckpt_io.resolve_checkpoint(path)
    except ckpt_io.CheckpointError as e:
        raise ExportError(str(e)) from None
    run_cfg = ckpt_io.load_checkpoint_config(ckpt) if (ckpt / ckpt_io.CONFIG_FILE).is_file() else None
    if not isinstance(run_cfg, dict) or not isinstance(run_cfg.get("model"), dict):
        raise ExportError(f"{ckpt / ckpt_io.CONFIG_FILE} is missing or has no `model:` section")
    model_cfg = validated_model_config(run_cfg["model"])
    tok_dir = ckpt / ckpt_io.TOKENIZER_DIR
    try:
        tokenizer = load_tokenizer(tok_dir)
    except Exception as e:  # DataError, or the files of a saved tokenizer are gone
        raise ExportError(
            f"cannot load the checkpoint's tokenizer from {tok_dir} ({type(e).__name__}: {e}); an exported model "
            "needs its tokenizer: copy the run's tokenizer/ folder into the checkpoint"
        ) from None
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ExportError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model_cfg.vocab_size}; "
            "the tokenizer does not belong to this checkpoint"
        )
    model = XLSTMLMForCausalLM(hf_config_for(model_cfg, tokenizer))
    try:
        ckpt_io.load_checkpoint_weights(model.model, ckpt)
    except RuntimeError as e:
        raise ExportError(
            f"the weights in {ckpt / ckpt_io.MODEL_FILE} do not fit the architecture in its config.yaml: "
            f"{str(e).splitlines()[0]}"
        ) from None
    return model.eval(), tokenizer, ckpt, run_cfg


def _for_remote_code(config: XLSTMLMConfig) -> None:
    # The exported code ships the PyTorch reference kernels only (no Triton files).
    if "kernel_backend" in config.model:
        config.model = {**config.model, "kernel_backend": "torch"}
    config.auto_map = dict(AUTO_MAP)
    config.architectures = ["XLSTMLMForCausalLM"]


# --- tokenizer -----------------------------------------------------------------------
def _gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the one ``tokenizers``' ByteLevel uses)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_tokenizer_fast():
    """A ``tokenizers`` tokenizer equal to ``ByteTokenizer``: token id = UTF-8 byte.

    The ByteLevel pre-tokenizer maps the UTF-8 bytes to GPT-2's printable stand-ins,
    a BPE model with those 256 characters and no merges gives one token per byte,
    and the ByteLevel decoder turns them back into bytes, decoded with replacement
    of invalid UTF-8 like ``bytes.decode(errors="replace")``. Byte 0 is the
    end-of-document (and padding) token.
    """
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = _gpt2_byte_chars()
    tok = HFTok(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[], unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    # split_special_tokens: text that contains the end-of-document character is encoded byte for byte
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=chars[0],
        pad_token=chars[0],
        split_special_tokens=True,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )


# --- chat template ---------------------------------------------------------------------
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def _jinja_str(text: str) -> str:
    """A Jinja string literal of ``text`` (Jinja decodes Python escapes in literals)."""
    return "'" + text.encode("unicode_escape").decode("ascii").replace("'", "\\'") + "'"


def eos_text(tokenizer: Tokenizer) -> str:
    """Text that the exported tokenizer encodes, inside a chat template, as the end-of-document id.

    Byte: the NUL character (byte 0 is the id, in training too). Sentencepiece: the eos
    piece, which the exported tokenizer parses as a special token in chat templates only
    (``XLSTMLMSentencePieceTokenizer.apply_chat_template``). Hugging Face: its eos token,
    a special token that its encoding parses.
    """
    if isinstance(tokenizer, ByteTokenizer):
        return chr(tokenizer.eos_id)
    if isinstance(tokenizer, SentencePieceTokenizer):
        return tokenizer._sp.id_to_piece(tokenizer.eos_id)
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer._tok.convert_ids_to_tokens(tokenizer.eos_id)
    raise ExportError(f"no chat template export for tokenizer kind {tokenizer.kind!r}")


def chat_template_jinja(template: str, eos: str) -> str:
    """The Jinja form of ``data.sft``'s ``simple`` or ``plain`` conversation format.

    Rendered like ``ChatFormatter``: a message is its role tag (simple: ``<|role|>``
    and a newline) and its content, then a newline, or ``eos`` after an assistant's;
    ``add_generation_prompt`` appends the assistant's tag. Every output is a Jinja
    expression, so whitespace control cannot change it.
    """
    if template not in ("simple", "plain"):
        raise ExportError(f"no Jinja form of chat template {template!r}")
    simple = template == "simple"
    tag = "'<|' + message['role'] + '|>\\n' + " if simple else ""
    return (
        "{%- for message in messages -%}"
        f"{{{{- {tag}message['content'] -}}}}"
        f"{{%- if message['role'] == 'assistant' -%}}{{{{- {_jinja_str(eos)} -}}}}"
        "{%- else -%}{{- '\\n' -}}{%- endif -%}"
        "{%- endfor -%}"
        + ("{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}" if simple else "")
    )


def sft_chat_template(tokenizer: Tokenizer, run_cfg: dict[str, Any] | None) -> str | None:
    """The chat template to ship for a model fine-tuned with ``data.sft`` (None: not an SFT
    run, or the Hugging Face tokenizer's own template, which its files carry)."""
    sft = ((run_cfg or {}).get("data") or {}).get("sft")
    if not sft:
        return None
    try:
        template = ChatFormatter(tokenizer, sft.get("chat_template", "auto")).template
    except ValueError as e:
        raise ExportError(f"the run's data.sft chat template cannot be exported: {e}") from None
    return None if template == "hf" else chat_template_jinja(template, eos_text(tokenizer))


#: A conversation of every role, with an earlier assistant turn, for checking an exported template.
PROBE_CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "reverse: abc"},
    {"role": "assistant", "content": "cba"},
    {"role": "user", "content": "and  x = [1, 2]\n?"},
    {"role": "assistant", "content": "?\n]2 ,1[ = x  dna"},
]


def chat_template_problem(out_dir: str | Path, tokenizer: Tokenizer, run_cfg: dict[str, Any] | None) -> str | None:
    """Why the exported folder's chat template does not reproduce the fine-tuning token ids
    (None: it does, or the run was not fine-tuned on conversations).

    Compares, on ``PROBE_CONVERSATION``, ``apply_chat_template`` of the whole conversation
    with the ids ``ChatFormatter.encode`` trained on, and with ``add_generation_prompt``
    the conversation before the last answer with the trained ids before that answer.
    """
    sft = ((run_cfg or {}).get("data") or {}).get("sft")
    if not sft:
        return None
    from transformers import AutoTokenizer

    fmt = ChatFormatter(tokenizer, sft.get("chat_template", "auto"))
    hf = AutoTokenizer.from_pretrained(out_dir, trust_remote_code=True)
    if not getattr(hf, "chat_template", None):
        return f"{out_dir} has no chat template"
    ids, trained = fmt.encode(PROBE_CONVERSATION)
    answer = len(trained)
    while answer > 0 and trained[answer - 1]:
        answer -= 1
    got_all = list(hf.apply_chat_template(PROBE_CONVERSATION, return_dict=False))
    got_prompt = list(hf.apply_chat_template(PROBE_CONVERSATION[:-1], add_generation_prompt=True, return_dict=False))
    for what, got, want in (("conversation", got_all, ids), ("prompt", got_prompt, ids[:answer])):
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            return (f"the exported chat template ({fmt.template}) tokenizes the probe {what} differently from "
                    f"fine-tuning from token {at} on: {got[at:at + 8]} vs {want[at:at + 8]}")
    return None


def save_hf_tokenizer(tokenizer: Tokenizer, out_dir: Path, chat_template: str | None = None) -> list[str]:
    """Write HF tokenizer files for ``tokenizer`` (and ``chat_template``, when given) into
    ``out_dir``; returns what was written."""
    before = set(p.name for p in out_dir.iterdir())
    if isinstance(tokenizer, ByteTokenizer):
        fast = byte_tokenizer_fast()
        fast.chat_template = chat_template
        fast.save_pretrained(out_dir)
    elif isinstance(tokenizer, SentencePieceTokenizer):
        shutil.copyfile(Path(__file__).with_name("tokenization.py"), out_dir / f"{SP_TOKENIZER_MODULE}.py")
        (out_dir / "sentencepiece.model").write_bytes(tokenizer._proto)
        sp = tokenizer._sp
        eos = sp.id_to_piece(tokenizer.eos_id) if tokenizer.eos_id is not None else None
        unk = sp.id_to_piece(sp.unk_id()) if sp.unk_id() >= 0 else None
        cfg = {
            "tokenizer_class": "XLSTMLMSentencePieceTokenizer",
            "auto_map": {"AutoTokenizer": [f"{SP_TOKENIZER_MODULE}.XLSTMLMSentencePieceTokenizer", None]},
            "eos_token": eos,
            "pad_token": eos,
            "unk_token": unk,
            "bos_token": None,
            "split_special_tokens": True,
            "clean_up_tokenization_spaces": False,
            "padding_side": "left",
            "model_max_length": int(1e12),
        }
        (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        if chat_template is not None:
            (out_dir / CHAT_TEMPLATE_FILE).write_text(chat_template)
    elif isinstance(tokenizer, HFTokenizer):
        tok = tokenizer._tok
        own = getattr(tok, "chat_template", None)
        if chat_template is not None:
            tok.chat_template = chat_template
        try:
            tok.save_pretrained(out_dir)
        finally:
            tok.chat_template = own
    else:
        raise ExportError(f"no Hugging Face export for tokenizer kind {tokenizer.kind!r}")
    return sorted(set(p.name for p in out_dir.iterdir()) - before)


# --- model card ------------------------------------------------------------------------
def _architecture_lines(cfg: ModelConfig) -> list[str]:
    kinds = cfg.block_kinds
    counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    letter = {kind: letter for letter, kind in BLOCK_LETTERS.items()}
    lines = [
        f"- blocks: {cfg.num_blocks} ({', '.join(f'{n} x {k}' for k, n in counts.items())}), "
        f"pattern `{''.join(letter[k] for k in kinds)}`",
        f"- d_model {cfg.d_model}, vocabulary {cfg.vocab_size}, norm {cfg.norm}, "
        f"tied embeddings: {'yes' if cfg.tie_embeddings else 'no'}",
    ]
    if "mlstm" in counts:
        lines.append(f"- mLSTM: {cfg.mlstm.num_heads} heads, inner dim {cfg.mlstm_inner_dim}, conv {cfg.mlstm.conv_kernel}")
    if "slstm" in counts:
        lines.append(f"- sLSTM: {cfg.slstm.num_heads} heads, gated MLP dim {cfg.slstm_ffn_dim}")
    if "attention" in counts:
        a = cfg.attention
        lines.append(f"- attention (Llama): {a.num_heads} heads, {a.num_kv_heads or a.num_heads} key/value heads, rotary theta {a.rope_theta:g}")
    if "mlstm7b" in counts:
        lines.append(
            f"- xLSTM-7B mLSTM: {cfg.mlstm7b.num_heads} heads, q/k dim {cfg.mlstm7b_qk_dim}, v dim {cfg.mlstm7b_v_dim}, "
            f"SwiGLU dim {cfg.mlstm7b_ffn_dim}"
        )
    return lines


def model_card(
    model: XLSTMLMForCausalLM,
    tokenizer: Tokenizer | None,
    run_cfg: dict[str, Any] | None,
    metrics: dict[str, Any] | None,
    source: str | None,
) -> str:
    cfg = model.config.model_config
    n, n_emb = model.num_params(), model.model.embedding.weight.numel()
    attention = "attention" in cfg.block_kinds
    recurrent = any(k != "attention" for k in cfg.block_kinds)
    kind = "hybrid recurrent / attention" if attention and recurrent else "attention (Llama)" if attention else "recurrent"
    data = (run_cfg or {}).get("data") or {}
    train = (run_cfg or {}).get("train") or {}
    corpus = (data.get("path") or (f"token shards {data['shards']}" if data.get("shards") else None)
              or ("the built-in corpus (Python standard library sources)" if run_cfg else "unknown"))
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        f"tags: [xlstm, {'recurrent, ' if recurrent else ''}{'attention, ' if attention else ''}custom_code]",
        "---",
        "",
        "# xLSTM language model (xlstm-lm)",
        "",
        f"A {kind} language model exported from xlstm-lm "
        "(xLSTM blocks and classic LSTM baselines). Its modeling code is included, so it loads with "
        "`trust_remote_code=True` without installing xlstm-lm.",
        "",
        "## Architecture",
        "",
        *_architecture_lines(cfg),
        f"- parameters: {n:,} ({n - n_emb:,} without the embedding)",
        "- inference keeps a constant-size recurrent state per block (no key/value cache)"
        if not attention
        else "- inference keeps a constant-size state per recurrent block and a key/value cache (growing with the "
        "context) per attention block",
        "",
        "## Training",
        "",
        f"- data: {corpus}",
        f"- tokenizer: {tokenizer.kind if tokenizer is not None else 'unknown'}",
    ]
    if train:
        lines.append(
            f"- steps: {train.get('max_steps')}, batch {train.get('batch_size')} x {train.get('seq_len')} tokens, "
            f"lr {train.get('lr')}, dtype {train.get('dtype')}"
        )
    if source:
        lines.append(f"- exported from checkpoint `{source}`")
    lines += ["", "## Evaluation", ""]
    if metrics:
        lines.append(
            f"Validation perplexity **{metrics['ppl']:.3f}** (loss {metrics.get('loss', float('nan')):.4f} nats per "
            f"token) at step {metrics.get('step')}, measured during training on the held-out split "
            f"(`metrics.jsonl`)."
        )
        if metrics.get("unigram_baseline_ppl") is not None:
            lines.append(f"Unigram baseline on the same split: {metrics['unigram_baseline_ppl']:.3f}.")
    else:
        lines.append("No validation metrics were found next to the checkpoint.")
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("PATH", trust_remote_code=True)',
        '# transformers >= 5 reads config.json for tokenizers too, hence trust_remote_code for both',
        'tok = AutoTokenizer.from_pretrained("PATH", trust_remote_code=True)',
        'print(tok.decode(model.generate(**tok("def ", return_tensors="pt"), max_new_tokens=50)[0]))',
        "```",
        "",
        "Batches must be padded on the left (the tokenizer is set up so); padded positions leave the "
        "recurrent state untouched.",
        "",
    ]
    return "\n".join(lines)


# --- export ----------------------------------------------------------------------------
def export_model(
    model: XLSTMLMForCausalLM,
    tokenizer: Tokenizer | None,
    out_dir: str | Path,
    run_cfg: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    source: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` (+ tokenizer, code, card) as a self-contained HF folder.
    ``dtype`` casts ``model`` in place before saving. A ``run_cfg`` with ``data.sft``
    ships the chat template the model was fine-tuned with."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = model.to(dtype)
    saved = copy.deepcopy(model.config)
    try:
        _for_remote_code(model.config)
        gen = model.generation_config
        gen.eos_token_id = model.config.eos_token_id
        gen.pad_token_id = model.config.pad_token_id
        gen.bos_token_id = model.config.bos_token_id
        model.save_pretrained(out_dir)
    finally:
        # the live model keeps its own config (the export's is for remote code)
        model.config = saved
    write_bundle(out_dir)
    if tokenizer is not None:
        save_hf_tokenizer(tokenizer, out_dir, sft_chat_template(tokenizer, run_cfg))
    (out_dir / "README.md").write_text(model_card(model, tokenizer, run_cfg, metrics, source))
    return out_dir


def export_checkpoint(
    path: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None, tokenizer: str | Path | None = None
) -> Path:
    """Export a run dir (its latest checkpoint), a checkpoint folder or a DeepSpeed run to
    ``out_dir`` (``tokenizer``: see ``load_checkpoint_as_hf``)."""
    try:
        model, tokenizer, ckpt, run_cfg = load_checkpoint_as_hf(path, tokenizer)
    except ConfigError as e:
        raise ExportError(f"{ckpt_io.resolve_checkpoint(path) / ckpt_io.CONFIG_FILE}: {e}") from None
    return export_model(model, tokenizer, out_dir, run_cfg, read_val_metrics(ckpt), str(ckpt), dtype)


__all__ = [
    "ExportError",
    "chat_template_problem",
    "byte_tokenizer_fast",
    "export_checkpoint",
    "export_model",
    "load_checkpoint_as_hf",
    "read_val_metrics",
    "save_hf_tokenizer",
    "sft_chat_template",
]
