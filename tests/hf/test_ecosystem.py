"""The ecosystem on the tiny model (CPU): transformers' Trainer trains it, peft LoRA
attaches/trains/merges, lm-eval's HFLM scores text with an exported model and
agrees with our own log-probabilities."""

from __future__ import annotations

import torch

from tests.helpers import assert_close
from tests.hf import tiny_hf_model
from xlstm_lm.data.tokenizers import ByteTokenizer
from xlstm_lm.hf.export import export_model
from xlstm_lm.hf.modeling import LORA_TARGET_MODULES


class RepeatingText(torch.utils.data.Dataset):
    """Sequences of a short repeating cycle: learnable in a few steps."""

    def __init__(self, n: int = 32, length: int = 24, vocab: int = 37):
        g = torch.Generator().manual_seed(0)
        starts = torch.randint(0, vocab, (n,), generator=g)
        self.rows = [(s + torch.arange(length) % 5) % vocab for s in starts]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def test_hf_trainer_trains_the_tiny_model(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny_hf_model("ml", dtype=torch.float32, perturb=0.0).train()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=16, per_device_train_batch_size=8, learning_rate=1e-2,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=RepeatingText())
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses


def test_peft_lora_trains_merges_and_generates_like_unmerged():
    from peft import LoraConfig, get_peft_model

    from xlstm_lm.layers.lora import register_headwise_lora

    # attention blocks share the xLSTM-7B block's q, k, v, out_proj names
    model = tiny_hf_model("xma", dtype=torch.float32, perturb=0.1)
    # the head-wise q/k/v of the paper mLSTM block take our per-head adapter (peft's custom-module hook)
    config = register_headwise_lora(
        LoraConfig(r=4, lora_alpha=8, target_modules=list(LORA_TARGET_MODULES), lora_dropout=0.0, task_type="CAUSAL_LM")
    )
    peft_model = get_peft_model(model, config)
    wrapped = {n.rsplit(".", 2)[-2] for n, _ in peft_model.named_modules() if n.endswith("lora_A")}
    assert wrapped == {"q", "k", "v", "out_proj", "proj_up", "proj_down", "q_proj", "k_proj", "v_proj"}
    assert any(n.endswith("blocks.2.attention.out_proj.lora_A") for n, _ in peft_model.named_modules())
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)

    ids = RepeatingText(n=8, length=16).rows
    ids = torch.stack(ids)
    opt = torch.optim.AdamW(trainable, lr=2e-2)
    peft_model.train()
    first = None
    for _ in range(8):
        loss = peft_model(input_ids=ids, labels=ids).loss
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < first
    peft_model.eval()
    with torch.no_grad():
        unmerged_logits = peft_model(input_ids=ids).logits
        unmerged = peft_model.generate(input_ids=ids[:2, :6], max_new_tokens=10, do_sample=False)
        merged_model = peft_model.merge_and_unload()
        assert not any("lora_" in n for n, _ in merged_model.named_parameters())
        # merging adds B @ A into the weights: fp32 rounding only
        assert_close(merged_model(ids).logits, unmerged_logits, rtol=1e-5, atol_floor=0)
        assert torch.equal(merged_model.generate(ids[:2, :6], max_new_tokens=10, do_sample=False), unmerged)


def test_lm_eval_hflm_loglikelihoods_match_our_model(tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model = tiny_hf_model("mx", dtype=torch.float32, vocab_size=256, eos_token_id=0, pad_token_id=0)
    export_model(model, ByteTokenizer(), tmp_path)
    lm = HFLM(pretrained=str(tmp_path), trust_remote_code=True, batch_size=2, device="cpu", dtype="float32")

    def logprobs(ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids])
        with torch.no_grad():
            lp = torch.log_softmax(model.model(x).logits.double(), dim=-1)
        return lp[0, :-1].gather(-1, x[0, 1:, None])[:, 0]

    # contexts without trailing whitespace (lm-eval moves it into the continuation)
    pairs = [("The cat", " sat on the mat."), ("x =", " 1"), ("déjà", " vu")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    for (ctx, cont), (ll, _) in zip(pairs, got):
        n = len(cont.encode())
        want = logprobs(list((ctx + cont).encode()))[-n:].sum()
        assert_close(torch.tensor(ll), want, rtol=1e-5, atol_floor=0, msg=ctx)

    # rolling: every token scored, the first one after the end-of-document token (id 0)
    texts = ["Hello world, this is a test.", "def f(x):\n    return x * 2\n"]
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)])
    for text, ll in zip(texts, rolling):
        want = logprobs([0] + list(text.encode())).sum()
        assert_close(torch.tensor(ll), want, rtol=1e-5, atol_floor=0, msg=text)
