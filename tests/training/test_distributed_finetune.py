"""Fine-tuning in the DeepSpeed loop on two CPU ranks (gloo, ZeRO-2): --init-from gives
the source weights at step 0, SFT (prompt-masked packed rows, a disjoint slice per rank)
lowers the held-out loss and resumes exactly, LoRA trains only the adapters.

The source is a freshly initialised tiny model saved as a checkpoint folder; all runs
share one two-rank launch (the module fixture), the tests read their traces.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

from tests.training.test_distributed import launch_runs, trace  # noqa: E402
from xlstm_lm.config import ModelConfig  # noqa: E402
from xlstm_lm.config_utils import from_dict, to_dict  # noqa: E402
from xlstm_lm.data.sft import SFTConfig, load_sft_data  # noqa: E402
from xlstm_lm.data.shards import PackedLoader, TokenShards, write_shards  # noqa: E402
from xlstm_lm.data.tokenizers import ByteTokenizer  # noqa: E402
from xlstm_lm.models import XLSTMLM  # noqa: E402
from xlstm_lm.training.checkpoint import load_checkpoint_weights, save_checkpoint  # noqa: E402

# ds_worker.py's model
MODEL = {"vocab_size": 256, "d_model": 32, "num_blocks": 2, "pattern": "ms",
         "mlstm": {"num_heads": 2, "chunk_size": 8}, "slstm": {"num_heads": 2}}
DOCS = [f"doc {i} " + "abc def " * (i % 9 + 1) for i in range(300)]
LETTERS = "abcdefgh"
LORA = {"r": 4, "alpha": 8.0}


def params_hash(params) -> str:
    """ds_worker.py's weights hash."""
    sha = hashlib.sha256()
    for p in params:
        sha.update(p.detach().float().numpy().tobytes())
    return sha.hexdigest()


def sft_rows(path: Path):
    return load_sft_data(SFTConfig(path=str(path), chat_template="plain"), ByteTokenizer(), 32, 4, 0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(123)
    source = XLSTMLM(from_dict(ModelConfig, MODEL)).eval()
    save_checkpoint(root / "source", 0, source, {}, {"model": to_dict(source.config)}, ByteTokenizer(), 1)
    write_shards(DOCS, ByteTokenizer(), root / "shards")
    words = [a + b + c for a in LETTERS for b in LETTERS for c in LETTERS if a != c]
    random.Random(0).shuffle(words)
    # 100 rows: 45 packed training rows, 5 held-out rows (the last global batch of 4 leaves rank 1 none)
    (root / "rev.jsonl").write_text(
        "".join(json.dumps({"prompt": f"reverse: {w}", "response": w[::-1]}) + "\n" for w in words[:100]))
    sft = {
        "train": {"init_from": str(root / "source"), "max_steps": 6, "seq_len": 32, "eval_every": 3,
                  "schedule": "constant", "warmup_steps": 0, "save_every": 100,
                  "distributed": {"zero_stage": 2}},
        "data": {"shards": None, "sft": {"path": str(root / "rev.jsonl"), "chat_template": "plain"}},
    }
    eval_only = {**sft, "train": {**sft["train"], "max_steps": 1, "eval_every": 1, "lr": 1e-12, "min_lr": 0.0}}
    lora = {"train": {"init_from": str(root / "source"), "lora": LORA, "max_steps": 3,
                      "distributed": {"zero_stage": 2}}}
    launch_runs(root, [
        {"name": "sft", "overrides": sft},
        {"name": "stop", "overrides": sft, "sigterm_at": 3},
        {"name": "resume", "dir": "stop", "overrides": sft, "resume": True},
        {"name": "eval", "overrides": eval_only},
        {"name": "lora", "overrides": lora},
    ], root / "shards")
    return root, source


def _val(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["split"] == "val"}


@torch.no_grad()
def test_init_from_gives_the_source_weights_and_the_held_out_loss(runs):
    root, source = runs
    for r in (0, 1):
        assert trace(root, r, "sft")["hashes"][0] == params_hash(source.parameters())
    # one step at lr 1e-12: the distributed held-out loss (rows split over the ranks, one
    # rank idle in the last batch) is the source model's loss per trained target
    val = sft_rows(root / "rev.jsonl").val
    assert val.shape[0] == 5
    expected = source(val.input_ids, labels=val.labels, reset=val.reset).loss.item()
    assert _val(root / "eval")[1] == pytest.approx(expected, rel=1e-5)


@torch.no_grad()
def test_sft_lowers_the_held_out_loss_and_resumes_exactly(runs):
    root, source = runs
    val = sft_rows(root / "rev.jsonl").val
    before = source(val.input_ids, labels=val.labels, reset=val.reset).loss.item()
    after = _val(root / "sft")
    assert after[6] < after[3] < before - 0.5, (before, after)
    full = trace(root, 0, "sft")["losses"]
    first, rest = trace(root, 0, "stop")["losses"], trace(root, 0, "resume")["losses"]
    assert len(first) == 3 and first + rest == full
    assert (root / "stop" / "tokenizer").is_dir(), "rank 0 saved the SFT run's tokenizer"


@torch.no_grad()
def test_lora_trains_only_the_adapters_from_the_source_weights(runs):
    root, source = runs
    # continued pretraining on the shards: the first step's loss is the source's on that global batch
    shards = TokenShards.open(root / "shards")
    first = [PackedLoader(shards, 16, 2, 0, r, 2).next_batch() for r in (0, 1)]
    expected = sum(source(b.input_ids, labels=b.labels, reset=b.reset).loss.item() for b in first) / 2
    for r in (0, 1):
        t = trace(root, r, "lora")
        # every source parameter is frozen (peft's base_layer keeps each weight's place in the order)
        assert t["frozen_hash"] == params_hash(source.parameters()), "base weights unchanged"
        assert t["final_hash"] != t["hashes"][0], "adapters trained"
        assert t["losses"][0] == pytest.approx(expected, rel=1e-5)
        assert all(math.isfinite(x) for x in t["losses"]) and t["adam_steps"] == 3


@torch.no_grad()
def test_lora_deepspeed_run_consolidates_to_a_merged_plain_model(runs, tmp_path):
    from xlstm_lm.hf.zero import consolidate_run, find_deepspeed_checkpoint, gather_weights
    from xlstm_lm.training.checkpoint import load_checkpoint_config
    from xlstm_lm.training.lora import LoraSettings, apply_lora

    root, source = runs
    out = consolidate_run(root / "lora", tmp_path / "merged")
    cfg = load_checkpoint_config(out)
    assert cfg["train"]["lora"] is None  # adapters folded in: a plain model
    merged = XLSTMLM(from_dict(ModelConfig, cfg["model"])).eval()
    load_checkpoint_weights(merged, out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # the same function as the adapter model the run trained
    adapted = apply_lora(XLSTMLM(from_dict(ModelConfig, cfg["model"])), from_dict(LoraSettings, LORA)).eval()
    adapted.load_state_dict(gather_weights(find_deepspeed_checkpoint(root / "lora")), strict=False)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)
    assert not torch.allclose(merged(ids).logits, source(ids).logits, atol=1e-5), "the adapters changed the model"
