"""tools/study.py at a tiny size: every (run, seed) trains on the same data and budget,
is scored on the same held-out text, and the table, plot and record are written; an
interrupted study continues without redoing finished runs."""

from __future__ import annotations

import json
import shutil

import yaml

from tools.study import main as study_main

MODEL = {"vocab_size": 256, "d_model": 32, "num_blocks": 2}


def test_study_runs_reports_and_resumes(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(2000)))
    out = tmp_path / "out"
    study = {
        "name": "tiny", "out": str(out),
        "data": {"path": str(text), "tokenizer": "byte", "max_bytes": 40000},
        "budget": {"tokens": 1024},
        "train": {"batch_size": 4, "seq_len": 32, "warmup_steps": 2, "eval_every": 4, "eval_batches": 2,
                  "log_every": 2, "save_every": 4, "device": "cpu"},
        "seeds": [0, 1], "eval": {"max_bytes": 3000},
        "runs": [{"name": "xlstm", "model": {**MODEL, "pattern": "ms", "mlstm": {"num_heads": 2}, "slstm": {"num_heads": 2}}},
                 {"name": "lstm", "model": {**MODEL, "pattern": "ll"}}],
    }
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump(study))
    assert study_main([str(cfg)]) == 0
    results = {(n, s): json.loads((out / n / f"seed{s}" / "result.json").read_text()) for n in ("xlstm", "lstm") for s in (0, 1)}
    for r in results.values():
        assert r["tokens"] == 1024 and r["step"] == 8 and r["val_bits_per_byte"] > 0 and len(r["curve"]) == 2
        assert r["tokenizer_fingerprint"] == results["xlstm", 0]["tokenizer_fingerprint"]
    # the same held-out text for every run, different seeds really differ
    assert len({r["eval_tokens"] for r in results.values()}) == 1
    assert results["lstm", 0]["val_loss"] != results["lstm", 1]["val_loss"]
    table = (out / "study.md").read_text()
    assert "| xlstm | `ms` | 2 |" in table and "| lstm | `ll` | 2 |" in table and "±" in table
    assert (out / "study.png").stat().st_size > 0
    record = json.loads((out / "study.json").read_text())
    assert record["bench"] == "study" and set(record["results"]) == {"xlstm", "lstm"}

    # interrupted: lstm seed 1 lost its result and its last checkpoint; the rest is kept
    kept = {k: (out / k[0] / f"seed{k[1]}" / "result.json").stat().st_mtime_ns for k in results if k != ("lstm", 1)}
    (out / "lstm" / "seed1" / "result.json").unlink()
    shutil.rmtree(out / "lstm" / "seed1" / "checkpoints" / "step_0000008")
    (out / "lstm" / "seed1" / "checkpoints" / "latest").write_text("step_0000004\n")
    capsys.readouterr()
    assert study_main([str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, kept") == 3 and "lstm seed 1: training" in printed
    assert "resumed from" in (out / "lstm" / "seed1" / "train.log").read_text()
    for k, mtime in kept.items():
        assert (out / k[0] / f"seed{k[1]}" / "result.json").stat().st_mtime_ns == mtime
    again = json.loads((out / "lstm" / "seed1" / "result.json").read_text())
    assert again["step"] == 8 and again["val_loss"] == results["lstm", 1]["val_loss"]


def test_study_config_errors(tmp_path):
    import pytest

    from tools.study import load_study
    from xlstm_lm.config_utils import ConfigError

    def study(**over):
        base = {"budget": {"tokens": 100, "match_params": 0.1},
                "runs": [{"name": "a", "model": {**MODEL, "pattern": "ll"}}, {"name": "b", "model": {**MODEL, "num_blocks": 3, "pattern": "lll"}}]}
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({**base, **over}))
        return path

    with pytest.raises(ConfigError, match=r"match_params=0.1.*\['b'\]"):
        load_study(study())
    with pytest.raises(ConfigError, match="unknown study keys \\['model'\\]"):
        load_study(study(model={}))
    with pytest.raises(ConfigError, match="budget.tokens"):
        load_study(study(budget={}))
    # the shipped CPU study is consistent (names, parameter match within 10%)
    from pathlib import Path

    shipped = load_study(Path(__file__).resolve().parents[2] / "configs" / "study" / "cpu_wikitext2.yaml")
    assert {r["name"] for r in shipped["runs"]} == {"xlstm10", "xlstm71", "xlstm-7b-block", "llama", "lstm"}
