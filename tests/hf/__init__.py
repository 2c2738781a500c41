"""Tests of the Hugging Face integration (xlstm_lm/hf, convert/hf_native, tools/export_hf).

Shared tiny models: d_model 32, two heads, chunk size 8 (so prompts longer than 8
run the chunkwise form), attention with four query heads on two key/value heads
(grouped-query), every weight perturbed so zero-initialised paths (sLSTM recurrent
weights, gate weights) take part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch

from xlstm_lm.config import ModelConfig
from xlstm_lm.config_utils import from_dict, to_dict
from xlstm_lm.data.tokenizers import ByteTokenizer
from xlstm_lm.hf.configuration import XLSTMLMConfig
from xlstm_lm.hf.modeling import XLSTMLMForCausalLM
from xlstm_lm.models import XLSTMLM
from xlstm_lm.training.checkpoint import save_checkpoint

#: one letter per block kind (m, s, x, attention and the six classic cells)
ALL_KINDS = "msxaehlpgc"
REPO = Path(__file__).resolve().parents[2]


def tiny_model_dict(pattern: str, vocab_size: int = 37, **overrides) -> dict:
    data = dict(
        vocab_size=vocab_size,
        d_model=32,
        num_blocks=len(pattern),
        pattern=pattern,
        mlstm={"num_heads": 2, "chunk_size": 8},
        slstm={"num_heads": 2},
        mlstm7b={"num_heads": 2, "chunk_size": 8},
        attention={"num_heads": 4, "num_kv_heads": 2},
    )
    data.update(overrides)
    return data


def tiny_hf_model(
    pattern: str, dtype: torch.dtype = torch.float64, seed: int = 0, perturb: float = 0.3, vocab_size: int = 37, **kw
) -> XLSTMLMForCausalLM:
    torch.manual_seed(seed)
    token_ids = {k: kw.pop(k) for k in ("eos_token_id", "pad_token_id", "bos_token_id") if k in kw}
    cfg = XLSTMLMConfig(model=tiny_model_dict(pattern, vocab_size, **kw), **token_ids)
    model = XLSTMLMForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturb * torch.randn_like(p))
    return model.eval()


def isolated_python(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a Python that sees the standard library and site-packages but
    not xlstm_lm: -I (no PYTHONPATH, no cwd or user site on sys.path) and -S (no
    site, so the editable install's .pth finder is never installed); site-packages
    is appended by hand, without processing its .pth files."""
    site_packages = sysconfig.get_paths()["purelib"]
    prelude = f"import sys; sys.path.append({site_packages!r})\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HF_MODULES_CACHE"] = str(cwd / "hf_modules")
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", prelude + code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


STEP = 40


def make_run(run_dir, pattern=ALL_KINDS, tokenizer=None, model_dict=None, **model_kw):
    """A run dir as the trainer leaves it: checkpoints/step_XXXXXXX, latest, metrics.jsonl."""
    torch.manual_seed(0)
    tokenizer = tokenizer or ByteTokenizer()
    data = model_dict or tiny_model_dict(pattern, vocab_size=tokenizer.vocab_size, tie_embeddings=True, **model_kw)
    cfg = from_dict(ModelConfig, data)
    model = XLSTMLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    run_cfg = {"model": to_dict(cfg), "train": {"max_steps": STEP, "batch_size": 4, "seq_len": 64, "lr": 1e-3, "dtype": "float32"},
               "data": {"path": "corpus/", "tokenizer": tokenizer.kind}}
    ckpt = save_checkpoint(run_dir, STEP, model, {}, run_cfg, tokenizer, keep_last=2)
    records = [{"step": 0, "split": "val", "kind": "unigram_baseline", "ppl": 120.5},
               {"step": 20, "split": "val", "loss": 3.0, "ppl": 20.09},
               {"step": STEP, "split": "val", "loss": 2.5, "ppl": 12.18},
               {"step": 60, "split": "val", "loss": 2.0, "ppl": 7.39}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return model.eval(), ckpt
