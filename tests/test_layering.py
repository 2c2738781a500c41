"""The package's layering holds (issue 11): ``import xlstm_lm.hf.export`` does not pull in
the training loop, and every import of one of our own modules inside a function is
there for a stated reason (an optional or heavy third-party dependency behind it, or
the training loop's lazy entry points), never to dodge an import circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "xlstm_lm"

#: (module file, imported module) -> why the import is inside a function
ALLOWED = {
    ("hf/_register.py", ".configuration"): "registers with transformers' Auto classes on their import (no transformers at import xlstm_lm)",
    ("hf/_register.py", ".modeling"): "the same",
    ("hf/bundle.py", None): "writes import lines as text",
    ("runs.py", ".hf.tokenization"): "transformers, only for a sentencepiece HF folder",
    ("runs.py", ".hf.modeling"): "transformers, only when a folder is loaded",
    ("evaluation/perplexity.py", "..hf.export"): "transformers, only when a model is loaded",
    ("evaluation/perplexity.py", "..hf.compat"): "transformers, only for a Hugging Face folder",
    ("training/cli.py", ".config"): "train.py's startup: the loops load after the arguments parse",
    ("training/cli.py", ".distributed"): "DeepSpeed's loop module, only when it runs",
    ("training/monitor.py", ".plot"): "matplotlib, only at the end of a run",
    ("training/launch_env.py", ".monitor"): "wandb check, only when asked for",
    ("training/lora.py", "..layers.lora"): "peft (the finetune extra), only with train.lora",
    ("layers/mlstm.py", "xlstm_lm_kernels.mlstm"): "the Triton kernels (triton is optional), only for kernel_backend=triton",
    ("layers/slstm.py", "xlstm_lm_kernels.slstm"): "the same",
    ("models/blocks.py", "..layers"): "the classic cells, only for a classic block",
    ("data/sft.py", ".dataset"): "the SFT unigram baseline only",
    ("convert/xlstm_ref.py", "..config"): "converter of the optional reference package",
    ("convert/xlstm_ref.py", ".hf_native"): "the same",
}


def _function_level_internal_imports() -> list[tuple[str, str, int]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("xlstm_lm")):
                    module = "." * node.level + (node.module or "")
                    found.append((rel, module, node.lineno))
    return found


def test_function_level_imports_of_our_modules_are_all_justified():
    unexplained = [
        f"xlstm_lm/{rel}:{line} imports {module}"
        for rel, module, line in _function_level_internal_imports()
        if (rel, module) not in ALLOWED and (rel, None) not in ALLOWED
    ]
    assert not unexplained, (
        "imports inside functions that are not in tests/test_layering.py's ALLOWED list (move them to the top of "
        "the module; if that makes a circle, the code is in the wrong module):\n  " + "\n  ".join(unexplained)
    )


def test_hf_export_does_not_import_the_training_loop():
    code = (
        "import sys, xlstm_lm.hf.export\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('xlstm_lm.training'))\n"
        "print(loaded)\n"
        "assert 'xlstm_lm.training.trainer' not in loaded and 'xlstm_lm.training.distributed' not in loaded, loaded\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
