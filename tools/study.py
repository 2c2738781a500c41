"""Equal-budget comparisons: train several architectures the same way, side by side.

    python tools/study.py configs/study/cpu_wikitext2.yaml            # run (or continue) the study
    python tools/study.py configs/study/cpu_wikitext2.yaml --report   # only rebuild table/plot/record

A study YAML lists runs (a name and a ``model:`` section each) and what they share:
the data (``data:``, the train.py data section: same text, same tokenizer), the token
budget (``budget.tokens`` -> ``train.max_steps`` from batch size x sequence length),
the schedule and every other ``train:`` setting, and the seeds. Each (run, seed) trains
with ``train.py`` in ``OUT/<name>/seed<k>/`` under the study's ``launcher`` (default:
this Python, one process; e.g. ``torchrun --nproc_per_node 8`` with a
``train.distributed`` section for GPUs), then is evaluated on the same held-out text
(the validation split of ``data.path``, or ``eval.text``): bits per byte and
perplexity, in stream mode. ``result.json`` in the run dir marks it finished.

Interrupted? Run the same command again: finished runs are not redone, an unfinished
one continues from its last checkpoint (``train.py --resume-or-new``).

Outputs in ``OUT`` (``out:`` in the YAML): ``study.md`` (mean and spread over seeds,
parameters, non-embedding parameters, training FLOPs per token, tokens/s, wall time),
``study.png`` (validation loss against tokens and against training FLOPs) and
``study.json`` (every number, the config, the date, the commit).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import torch  # noqa: E402
import yaml  # noqa: E402

from bench_record import write_record  # noqa: E402
from xlstm_lm.config import ModelConfig  # noqa: E402
from xlstm_lm.config_utils import ConfigError, from_dict, load_yaml  # noqa: E402
from xlstm_lm.data.corpus import DataError, load_corpus, split_documents  # noqa: E402
from xlstm_lm.data.tokenizers import load_tokenizer  # noqa: E402
from xlstm_lm.models import XLSTMLM  # noqa: E402
from xlstm_lm.training.checkpoint import latest_checkpoint, load_checkpoint_config  # noqa: E402

RESULT = "result.json"
STUDY_KEYS = {"name", "out", "data", "train", "budget", "seeds", "runs", "launcher", "eval", "base"}


def load_study(path: Path) -> dict[str, Any]:
    """The study YAML, checked: unknown top-level keys and incomplete runs are errors."""
    study = load_yaml(path)
    unknown = set(study) - STUDY_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown study keys {sorted(unknown)}; allowed: {sorted(STUDY_KEYS)}")
    runs = study.get("runs") or []
    if not runs or not all(isinstance(r, dict) and r.get("name") and isinstance(r.get("model"), dict) for r in runs):
        raise ConfigError(f"{path}: 'runs' must list at least one {{name: ..., model: {{...}}}}")
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must be unique, got {names}")
    if not (study.get("budget") or {}).get("tokens"):
        raise ConfigError(f"{path}: set budget.tokens (the training tokens of every run)")
    study.setdefault("seeds", [0])
    study.setdefault("out", f"runs/study_{path.stem}")
    check_param_match(study, path)
    return study


def non_embedding_params(model_section: dict[str, Any]) -> int:
    """Non-embedding parameters of a model section (built on the meta device)."""
    with torch.device("meta"):
        return XLSTMLM(from_dict(ModelConfig, model_section, "model")).num_params(exclude_embedding=True)


def check_param_match(study: dict[str, Any], path: Path) -> None:
    """``budget.match_params: 0.1``: every run's non-embedding parameters within 10% of the first run's."""
    tolerance = (study.get("budget") or {}).get("match_params")
    if tolerance is None:
        return
    counts = {r["name"]: non_embedding_params(r["model"]) for r in study["runs"]}
    ref = next(iter(counts.values()))
    off = {n: c for n, c in counts.items() if abs(c - ref) > tolerance * ref}
    if off:
        raise ConfigError(
            f"{path}: budget.match_params={tolerance}: non-embedding parameters {counts} differ from the first run's "
            f"{ref:,} by more than {tolerance:.0%} for {sorted(off)}; resize those models"
        )


def run_config(study: dict[str, Any], run: dict[str, Any], seed: int, run_dir: Path) -> dict[str, Any]:
    """The train.py config of one (run, seed): the shared sections, the run's model, the budget."""
    train = dict(study.get("train") or {})
    tokens_per_step = int(train.get("batch_size", 16)) * int(train.get("seq_len", 256))
    train.update(
        max_steps=math.ceil(int(study["budget"]["tokens"]) / tokens_per_step), seed=seed, run_dir=str(run_dir),
        sample_tokens=0,
    )
    return {"model": dict(run["model"]), "train": train, "data": dict(study.get("data") or {})}


def train_one(study: dict[str, Any], run: dict[str, Any], seed: int, out: Path) -> Path:
    """Train (or continue) one (run, seed) with train.py under the study's launcher."""
    run_dir = out / run["name"] / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = run_dir / "study_run.yaml"
    cfg_file.write_text(yaml.safe_dump(run_config(study, run, seed, run_dir), sort_keys=False))
    launcher = shlex.split(study.get("launcher") or "") or [sys.executable]
    cmd = [*launcher, str(ROOT / "train.py"), "--config", str(cfg_file), "--resume-or-new"]
    t0 = time.time()
    with (run_dir / "train.log").open("a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{run['name']} seed {seed} failed (exit {proc.returncode}); see {run_dir / 'train.log'}")
    # wall time over every sitting of this run (an interrupted run continues)
    (run_dir / "wall_s.txt").write_text(f"{_previous_wall(run_dir) + time.time() - t0:.1f}\n")
    return run_dir


def _previous_wall(run_dir: Path) -> float:
    f = run_dir / "wall_s.txt"
    return float(f.read_text()) if f.is_file() else 0.0


def held_out_texts(study: dict[str, Any]) -> list[str]:
    """The evaluation text every run is scored on: ``eval.text``, else the validation split
    of ``data.path`` exactly as train.py splits it."""
    ev, data = study.get("eval") or {}, study.get("data") or {}
    max_bytes = ev.get("max_bytes")
    if ev.get("text"):
        docs = load_corpus(ev["text"], max_bytes, flag="eval.text")
    else:
        docs = split_documents(load_corpus(data.get("path"), data.get("max_bytes")), float(data.get("val_fraction", 0.05)))[1]
        if max_bytes:
            kept, total = [], 0
            for d in docs:
                kept.append(d)
                total += len(d.text.encode())
                if total >= max_bytes:
                    break
            docs = kept
    return [d.text for d in docs]


def evaluate_one(run_dir: Path, texts: list[str], study: dict[str, Any]) -> dict[str, Any]:
    """Scores, size and speed of a finished run; written to ``run_dir/result.json``."""
    from xlstm_lm.evaluation import evaluate, load_scorer

    ckpt = latest_checkpoint(run_dir)
    run_cfg = load_checkpoint_config(ckpt)
    model = XLSTMLM(from_dict(ModelConfig, run_cfg["model"], "model"))
    train = run_cfg["train"]
    tokens_per_step = int(train["batch_size"]) * int(train["seq_len"])
    flops = model.flops_per_token(int(train["seq_len"]))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = [(r["step"] * tokens_per_step, r["loss"]) for r in records
           if r.get("split") == "val" and "kind" not in r and r.get("loss") is not None]
    tok_s = [r["tokens_per_s"] for r in records if r.get("split") == "train" and r.get("tokens_per_s")]
    res = evaluate(load_scorer(run_dir), texts, "stream", chunk=int((study.get("eval") or {}).get("chunk", 512)))
    fingerprint = load_tokenizer(ckpt / "tokenizer").fingerprint()
    result = {
        "step": int(ckpt.name.split("_")[-1]), "tokens": int(ckpt.name.split("_")[-1]) * tokens_per_step,
        "params": model.num_params(), "non_embedding_params": model.num_params(exclude_embedding=True),
        "flops_per_token": flops, "tokens_per_s": statistics.median(tok_s) if tok_s else None,
        "wall_s": _previous_wall(run_dir), "val_bits_per_byte": res.bits_per_byte, "val_ppl": res.perplexity,
        "val_loss": res.loss, "eval_tokens": res.tokens, "curve": val, "tokenizer_fingerprint": fingerprint,
    }
    (run_dir / RESULT).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def report(study: dict[str, Any], out: Path, source: Path) -> dict[str, Any]:
    """study.md, study.png and study.json from the finished runs' result.json files."""
    rows, results = [], {}
    for run in study["runs"]:
        got = [json.loads(p.read_text()) for s in study["seeds"] if (p := out / run["name"] / f"seed{s}" / RESULT).is_file()]
        results[run["name"]] = got
        if not got:
            continue
        first = got[0]
        rows.append(
            f"| {run['name']} | `{run['model'].get('pattern', '')}` | {len(got)} | "
            f"{_mean_spread([r['val_bits_per_byte'] for r in got])} | {_mean_spread([r['val_ppl'] for r in got])} | "
            f"{first['params'] / 1e6:.2f}M | {first['non_embedding_params'] / 1e6:.2f}M | "
            f"{first['flops_per_token'] / 1e6:.1f} | {statistics.mean(r['tokens_per_s'] or 0 for r in got):,.0f} | "
            f"{statistics.mean(r['wall_s'] for r in got) / 60:.1f} |"
        )
    fingerprints = {r.get("tokenizer_fingerprint") for got in results.values() for r in got}
    if len(fingerprints) > 1:
        raise ConfigError(f"the runs of {source} used different tokenizers ({fingerprints}): not a fair comparison")
    tokens = int(study["budget"]["tokens"])
    table = "\n".join([
        f"# Study `{study.get('name', source.stem)}`",
        "",
        f"{tokens:,} training tokens per run (same data, tokenizer, schedule), seeds {study['seeds']}; "
        "validation bits per byte and perplexity in stream mode on the same held-out text; mean ± std over seeds.",
        "",
        "| run | pattern | seeds | val bits/byte | val ppl (token) | params | non-emb. | train MFLOP/token | tokens/s | wall min |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    (out / "study.md").write_text(table)
    _plot(results, out / "study.png")
    record = {"study": str(source), "config": study, "results": results}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    path = write_record("study", device, False, record, out=str(out))
    path.replace(out / "study.json")
    print(table)
    return record


def _plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    by_tokens, by_flops = fig.subplots(1, 2)
    for name, got in results.items():
        for i, r in enumerate(got):
            if not r["curve"]:
                continue
            x, y = zip(*r["curve"])
            label = name if i == 0 else None
            line = by_tokens.plot(x, y, "o-", ms=3, label=label, alpha=0.8)[0]
            by_flops.plot([t * r["flops_per_token"] for t in x], y, "o-", ms=3, color=line.get_color(), alpha=0.8)
    by_tokens.set(xlabel="training tokens", ylabel="validation loss (nats/token)", title="same tokens")
    by_flops.set(xlabel="training FLOPs", xscale="log", title="same compute")
    for ax in (by_tokens, by_flops):
        ax.grid(alpha=0.3)
    by_tokens.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", type=Path, help="the study YAML")
    ap.add_argument("--report", action="store_true", help="only rebuild study.md/png/json from finished runs")
    args = ap.parse_args(argv)
    try:
        study = load_study(args.study)
        out = Path(study["out"])
        out.mkdir(parents=True, exist_ok=True)
        if not args.report:
            texts = held_out_texts(study)
            for run in study["runs"]:
                for seed in study["seeds"]:
                    run_dir = out / run["name"] / f"seed{seed}"
                    if (run_dir / RESULT).is_file():
                        print(f"{run['name']} seed {seed}: finished earlier, kept")
                        continue
                    print(f"{run['name']} seed {seed}: training ({run_dir})", flush=True)
                    train_one(study, run, seed, out)
                    result = evaluate_one(run_dir, texts, study)
                    print(f"{run['name']} seed {seed}: val {result['val_bits_per_byte']:.4f} bits/byte", flush=True)
        report(study, out, args.study)
    except (ConfigError, DataError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
