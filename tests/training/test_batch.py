"""One batch type from every packed source and one token storage rule (issue 11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xlstm_lm.data.batch import PackedBatch, token_dtype
from xlstm_lm.data.sft import SFTBatches
from xlstm_lm.data.shards import PackedLoader, TokenShards, write_shards
from xlstm_lm.data.tokenizers import ByteTokenizer
from xlstm_lm.training.finetune import split_batch


def test_token_dtype_keeps_every_id_and_nothing_wider():
    assert token_dtype(256) == np.uint16 and token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32 and token_dtype(200_000) == np.uint32
    assert np.iinfo(token_dtype(65_536)).max == 65_535


def test_shards_and_sft_rows_yield_the_same_batch_type(tmp_path):
    docs = [f"doc {i} " + "abc " * (i % 5 + 1) for i in range(60)]
    write_shards(docs, ByteTokenizer(), tmp_path / "shards")
    shard_batch = PackedLoader(TokenShards.open(tmp_path / "shards"), seq_len=16, batch_size=2, seed=0).next_batch()
    rows = PackedBatch(torch.ones(6, 16, dtype=torch.long), torch.ones(6, 16, dtype=torch.long), torch.zeros(6, 16, dtype=torch.bool))
    sft_batch = SFTBatches(rows, 2, seed=0).next_batch()
    for batch in (shard_batch, sft_batch):
        assert type(batch) is PackedBatch and batch.shape == (2, 16)
        inputs, labels, extra = split_batch(batch)
        assert inputs is batch.input_ids and labels is batch.labels and extra == {"reset": batch.reset}
    assert shard_batch.rows is not None and len(shard_batch[:1].rows) == 1


def test_validation_loss_is_per_trained_target_in_the_single_process_loop(tmp_path):
    """The DeepSpeed loop's definition (evaluate_rows): rows weigh by their trained targets."""
    import torch.nn.functional as F

    from xlstm_lm.config_utils import apply_overrides, load_yaml
    from xlstm_lm.models import XLSTMLM
    from xlstm_lm.training.config import build_run_config
    from xlstm_lm.training.trainer import Trainer
    from tests.training.test_train import SHRINK, TINY

    cfg = build_run_config(apply_overrides(load_yaml(TINY), [*SHRINK, "train.batch_size=2"]))
    torch.manual_seed(0)
    model = XLSTMLM(cfg.model)
    ids = torch.randint(0, 256, (2, 16))
    labels = ids.clone()
    labels[0, :14] = -100  # row 0: 2 targets; row 1: 16
    val = PackedBatch(ids, labels, torch.zeros(2, 16, dtype=torch.bool))
    trainer = Trainer(cfg, model, torch.optim.AdamW(model.parameters()), ByteTokenizer(), None, val,
                      torch.device("cpu"), tmp_path, None, progress=False)
    with torch.no_grad():
        logits = model(ids).logits
    expected = F.cross_entropy(logits.reshape(-1, 256), labels.reshape(-1), ignore_index=-100).item()
    assert trainer.evaluate() == pytest.approx(expected, rel=1e-6)
