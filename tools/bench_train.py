"""Training speed and memory: our xLSTM configs against Llamas of equal size, in one run.

    python tools/bench_train.py                    # on a GPU: 125m/350m configs at context 2048 and 8192
    python tools/bench_train.py --dry-run          # anywhere: tiny models on CPU, checks the script end to end

For every model config and context: an xLSTM (``XLSTMLM``) and a peer
``transformers.LlamaForCausalLM`` (SDPA attention) sized to the same parameter
count, each trained on random tokens with AdamW for ``--steps`` timed steps after
``--warmup`` untimed ones (forward, backward, optimizer step; bf16 autocast over
fp32 weights, as the trainer does). Reported per model: tokens/s per GPU, MFU
against the device's bf16 peak (``training.monitor.PEAK_FLOPS``; n/a on CPU), peak
memory. FLOPs per token: ours from ``model.flops_per_token(T)``; the Llama's as
6 x (non-embedding params + head) + 12 x layers x d_model x T (attention; PaLM appendix B).
A JSON record goes to ``benchmarks/results/train-<device>-<date>.json`` (dry runs:
``runs/bench-dry-run/``). An out-of-memory point is recorded as skipped, not fatal.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = "configs/xlstm/xlstm71_125m.yaml,configs/xlstm/xlstm71_350m.yaml,configs/xlstm/xlstm7b_350m.yaml"
DRY_MODEL = {"vocab_size": 256, "d_model": 64, "num_blocks": 2, "pattern": "ms",
             "mlstm": {"num_heads": 2, "chunk_size": 16}, "slstm": {"num_heads": 2}}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny models on CPU, two short contexts")
    ap.add_argument("--configs", default=CONFIGS, help="comma-separated model configs")
    ap.add_argument("--contexts", default="2048,8192", help="sequence lengths")
    ap.add_argument("--tokens-per-step", type=int, default=65536, help="batch = this / context (at least 1)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, autotuning)")
    ap.add_argument("--out", default=None, help="folder for the JSON record")
    return ap.parse_args(argv)


ARGS = parse_args()
if ARGS.dry_run:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, str(ROOT))

from bench_record import write_record  # noqa: E402

from xlstm_lm.training.monitor import format_mfu, mfu, peak_flops  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() and not ARGS.dry_run else "cpu")


def build_ours(config: str | None):
    from xlstm_lm.config import ModelConfig
    from xlstm_lm.config_utils import from_dict, load_yaml
    from xlstm_lm.models import XLSTMLM

    data = DRY_MODEL if config is None else load_yaml(ROOT / config)["model"]
    return XLSTMLM(from_dict(ModelConfig, data, "model")).to(DEVICE)


def build_llama(n_params: int, vocab: int, d_model: int):
    """A Llama with the same width and vocabulary and the depth that matches ``n_params``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, d_model // 64)
    inter = int(8 / 3 * d_model / 64 + 0.999) * 64
    per_layer = 4 * d_model * d_model + 3 * d_model * inter + 2 * d_model
    layers = max(1, round((n_params - vocab * d_model) / per_layer))
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=d_model, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=65536,
        tie_word_embeddings=True, attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).to(DEVICE)


def llama_flops_per_token(model, seq_len: int) -> float:
    c = model.config
    dense = sum(p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and "embed_tokens" not in n)
    dense += c.vocab_size * c.hidden_size  # the tied head is a matmul all the same
    return 6.0 * dense + 12.0 * c.num_hidden_layers * c.hidden_size * seq_len


def measure(name: str, model, seq_len: int, batch: int, vocab: int, flops_per_token: float) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seq_len)
    ids = torch.randint(0, vocab, (batch, seq_len + 1), generator=g).to(DEVICE)
    autocast = torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=DEVICE.type == "cuda")
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def step():
        with autocast:
            loss = model(ids[:, :-1], labels=ids[:, 1:] if name == "ours" else ids[:, :-1]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(ARGS.warmup):
        step()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(ARGS.steps):
        step()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / ARGS.steps
    tok_s = batch * seq_len / seconds
    return {
        "context": seq_len, "batch": batch, "step_s": seconds, "tokens_per_s_per_gpu": tok_s,
        "flops_per_token": flops_per_token, "mfu": mfu(tok_s, flops_per_token, peak_flops(DEVICE)),
        "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if DEVICE.type == "cuda" else None,
    }




def main() -> int:
    configs = [None] if ARGS.dry_run else ARGS.configs.split(",")
    contexts = [32, 64] if ARGS.dry_run else [int(x) for x in ARGS.contexts.split(",")]
    tokens_per_step = 128 if ARGS.dry_run else ARGS.tokens_per_step
    rows, params = [], {}
    for config in configs:
        label = config or "dry-run tiny"
        torch.manual_seed(0)
        ours = build_ours(config)
        llama = build_llama(ours.num_params(), ours.config.vocab_size, ours.config.d_model)
        params[label] = {"ours": ours.num_params(), "llama-sdpa": sum(p.numel() for p in llama.parameters())}
        for T in contexts:
            batch = max(1, tokens_per_step // T)
            for name, model in (("ours", ours), ("llama-sdpa", llama)):
                fpt = model.flops_per_token(T) if name == "ours" else llama_flops_per_token(model, T)
                try:
                    r = measure(name, model, T, batch, ours.config.vocab_size, fpt)
                except torch.OutOfMemoryError:
                    r = {"context": T, "batch": batch, "skipped": "out of memory"}
                    torch.cuda.empty_cache()
                rows.append({"config": label, "model": name, **r})
                mem = r.get("peak_mem_mb")
                mem_text = "-" if mem is None else f"{mem:,.0f} MB"
                result = r.get("skipped") or (
                    f"{r['tokens_per_s_per_gpu']:12,.0f} tok/s  MFU {format_mfu(r['mfu'])}  peak {mem_text}"
                )
                print(f"{label:40s} {name:11s} T={T:6d} B={batch:4d} {result}", flush=True)
        del ours, llama
    device_name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"cpu-{platform.machine()}"
    import transformers

    record = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "precision": "bf16 autocast, fp32 weights" if DEVICE.type == "cuda" else "fp32",
        "tokens_per_step": tokens_per_step,
        "steps": ARGS.steps,
        "params": params,
        "results": rows,
    }
    write_record("train", device_name, ARGS.dry_run, record, ARGS.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
