"""Optional packages: each feature's package belongs to the extra named in
xlstm_lm/extras.py (checked against pyproject.toml), and a missing one is a one-line
error that names the extra, not an ImportError in the middle of a run."""

from __future__ import annotations

import sys
import tomllib

import pytest

from tests.hf import REPO
from xlstm_lm.extras import OPTIONAL, MissingExtra, require
from xlstm_lm.training.cli import main


def _requirement_names(reqs: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for r in reqs}


def test_every_optional_package_is_in_its_extra_and_in_dev():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    core = _requirement_names(project["dependencies"])
    for module, (package, extra) in OPTIONAL.items():
        assert package.lower() in _requirement_names(extras[extra]), (module, extra)
        assert package.lower() not in core, f"{package} is optional: it must not be a core dependency"
    # dev installs every extra (through a self-reference)
    dev_extras = next(r for r in extras["dev"] if r.startswith("xlstm-lm["))
    assert {e for _, e in OPTIONAL.values()} <= set(dev_extras[len("xlstm-lm["):-1].split(",")), dev_extras

@pytest.mark.parametrize("module", sorted(OPTIONAL))
def test_require_names_the_extra_when_the_package_is_missing(module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    package, extra = OPTIONAL[module]
    with pytest.raises(MissingExtra, match=rf"some feature needs the {package} package.*pip install 'xlstm-lm\[{extra}\]'"):
        require(module, "some feature")
    with pytest.raises(KeyError, match="not an optional dependency"):
        require("numpy", "anything")


def test_train_with_a_missing_kernel_package_stops_with_one_line(tmp_path, monkeypatch, capsys):
    text = tmp_path / "text.txt"
    text.write_text("hello world, " * 400)
    monkeypatch.setitem(sys.modules, "triton", None)
    argv = ["--data", str(text), "--run-dir", str(tmp_path / "run"), "model.d_model=32", "model.num_blocks=1",
            "model.pattern=m", "model.kernel_backend=triton", "train.max_steps=2", "train.seq_len=32", "train.batch_size=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kernel_backend=triton needs the triton package" in err, err
    assert "pip install 'xlstm-lm[kernels]'" in err
