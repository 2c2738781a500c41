"""Decode speed and memory: our xLSTM against a Llama of equal size, in one run.

    python tools/bench_generate.py                 # on a GPU: 125M-class models, prompts 1k/4k/16k, B 1 and 64
    python tools/bench_generate.py --dry-run       # anywhere: tiny models on CPU, checks the script end to end

Both models are Hugging Face causal LMs driven by the same loop: one prefill
forward over the prompt (timed: prefill tokens/s), then single-token forwards on
the cache (timed: decode tokens/s, median per-step latency), peak memory on CUDA.
Our model is ``XLSTMLMForCausalLM`` (recurrent state: memory constant in context);
the peer is ``transformers.LlamaForCausalLM`` with SDPA attention and its KV cache,
sized to the same parameter count. ``--long-gen N`` also decodes N tokens at batch 1
and reports tokens/s per 1k-token window, to show whether speed stays flat.
A JSON record goes to ``benchmarks/results/generate-<device>-<date>.json``
(dry runs: ``runs/bench-dry-run/``). Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny models on CPU (Triton interpreter if triton is installed)")
    ap.add_argument("--config", default="configs/xlstm/xlstm71_125m.yaml", help="our model config")
    ap.add_argument("--prompts", default="1024,4096,16384", help="prompt lengths")
    ap.add_argument("--gen", type=int, default=256, help="tokens decoded per measurement")
    ap.add_argument("--batches", default="1,64", help="batch sizes")
    ap.add_argument("--long-gen", type=int, default=16384, help="batch-1 run decoding this many tokens (0: skip)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--out", default=None, help="folder for the JSON record")
    return ap.parse_args(argv)


ARGS = parse_args()
if ARGS.dry_run:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, str(ROOT))

from bench_record import write_record  # noqa: E402

from xlstm_lm.hf.compat import CACHE_NAME, output_cache  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() and not ARGS.dry_run else "cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def build_ours(dtype):
    from xlstm_lm.config import ModelConfig
    from xlstm_lm.config_utils import from_dict, load_yaml
    from xlstm_lm.hf import XLSTMLMConfig, XLSTMLMForCausalLM

    if ARGS.dry_run:
        data = {"vocab_size": 256, "d_model": 64, "num_blocks": 2, "pattern": "ms", "mlstm": {"num_heads": 2, "chunk_size": 16}, "slstm": {"num_heads": 2}}
    else:
        data = load_yaml(ROOT / ARGS.config)["model"]
    cfg = from_dict(ModelConfig, data, "model")
    model = XLSTMLMForCausalLM(XLSTMLMConfig(model=cfg))
    return model.to(DEVICE, dtype).eval()


def build_llama(n_params: int, vocab: int, d_model: int, dtype):
    """A Llama with the same width and vocabulary and the depth that matches ``n_params``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, d_model // 64)
    inter = int(8 / 3 * d_model / 64 + 0.999) * 64

    def make(layers):
        return LlamaConfig(
            vocab_size=vocab, hidden_size=d_model, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=65536,
            tie_word_embeddings=True, attn_implementation="sdpa",
        )

    per_layer = 4 * d_model * d_model + 3 * d_model * inter + 2 * d_model
    layers = max(1, round((n_params - vocab * d_model) / per_layer))
    return LlamaForCausalLM(make(layers)).to(DEVICE, dtype).eval()


@torch.no_grad()
def measure(model, batch: int, prompt: int, gen: int, vocab: int, windows: bool = False) -> dict:
    g = torch.Generator(device="cpu").manual_seed(batch * 7 + prompt)
    ids = torch.randint(1, vocab, (batch, prompt), generator=g).to(DEVICE)
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base_mem = torch.cuda.memory_allocated() if DEVICE.type == "cuda" else 0
    sync()
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    sync()
    prefill_s = time.perf_counter() - t0
    cache = output_cache(out)
    nxt = out.logits[:, -1:].argmax(-1)
    step_ms = []
    for _ in range(gen):
        t0 = time.perf_counter()
        # the cache under the installed transformers' name (Llama's and ours alike)
        out = model(input_ids=nxt, use_cache=True, **{CACHE_NAME: cache})
        cache = output_cache(out)
        nxt = out.logits[:, -1:].argmax(-1)
        sync()
        step_ms.append((time.perf_counter() - t0) * 1e3)
    row = {
        "batch": batch,
        "prompt": prompt,
        "generated": gen,
        "prefill_tokens_per_s": batch * prompt / prefill_s,
        "decode_tokens_per_s": batch * gen / (sum(step_ms) / 1e3),
        "decode_step_ms_median": statistics.median(step_ms),
        "decode_step_ms_min": min(step_ms),
        "decode_step_ms_max": max(step_ms),
        "peak_mem_mb": (torch.cuda.max_memory_allocated() - base_mem) / 2**20 if DEVICE.type == "cuda" else None,
    }
    if windows:
        w = 1024 if gen >= 2048 else max(1, gen // 4)
        row["tokens_per_s_by_window"] = [
            {"from_token": s, "tokens_per_s": batch * len(step_ms[s : s + w]) / (sum(step_ms[s : s + w]) / 1e3)}
            for s in range(0, gen, w)
        ]
    return row




def main() -> int:
    dtype = torch.float32 if ARGS.dry_run else getattr(torch, ARGS.dtype)
    prompts = [16, 48] if ARGS.dry_run else [int(x) for x in ARGS.prompts.split(",")]
    batches = [1, 2] if ARGS.dry_run else [int(x) for x in ARGS.batches.split(",")]
    gen = 4 if ARGS.dry_run else ARGS.gen
    long_gen = 12 if ARGS.dry_run else ARGS.long_gen
    torch.manual_seed(0)
    ours = build_ours(dtype)
    cfg = ours.model.config
    llama = build_llama(ours.model.num_params(), cfg.vocab_size, cfg.d_model, dtype)
    models = {
        "ours": ours,
        "llama-sdpa": llama,
    }
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    rows = []
    for name, model in models.items():
        for B in batches:
            for P in prompts:
                try:
                    r = measure(model, B, P, gen, cfg.vocab_size)
                except torch.OutOfMemoryError:
                    r = {"batch": B, "prompt": P, "skipped": "out of memory"}
                    torch.cuda.empty_cache()
                rows.append({"model": name, **r})
        if long_gen:
            rows.append({"model": name, "long": True, **measure(model, 1, prompts[0], long_gen, cfg.vocab_size, windows=True)})
    print("\nparams: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in params.items()))
    print(f"{'model':12s} {'B':>4s} {'prompt':>7s} {'gen':>6s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'step ms':>9s} {'peak MB':>9s}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['model']:12s} {r['batch']:4d} {r['prompt']:7d}  {r['skipped']}")
            continue
        mem = f"{r['peak_mem_mb']:9.0f}" if r["peak_mem_mb"] is not None else f"{'-':>9s}"
        print(
            f"{r['model']:12s} {r['batch']:4d} {r['prompt']:7d} {r['generated']:6d} {r['prefill_tokens_per_s']:14.0f} "
            f"{r['decode_tokens_per_s']:13.1f} {r['decode_step_ms_median']:9.2f} {mem}"
        )
    for r in rows:
        ll = next((x for x in rows if x["model"] == "llama-sdpa" and x.get("batch") == r.get("batch") and x.get("prompt") == r.get("prompt") and x.get("long") == r.get("long")), None)
        if r["model"] == "ours" and ll and "skipped" not in r and "skipped" not in ll:
            r["decode_speedup_vs_llama"] = r["decode_tokens_per_s"] / ll["decode_tokens_per_s"]
            r["prefill_speedup_vs_llama"] = r["prefill_tokens_per_s"] / ll["prefill_tokens_per_s"]
    device_name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"cpu-{platform.machine()}"
    import transformers

    record = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "dtype": str(dtype),
        "config": ARGS.config if not ARGS.dry_run else "dry-run tiny",
        "params": params,
        "results": rows,
    }
    write_record("generate", device_name, ARGS.dry_run, record, ARGS.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
