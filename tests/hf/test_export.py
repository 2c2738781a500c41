"""tools/export_hf.py and xlstm_lm.hf.export: a training checkpoint becomes a Hugging Face
folder that loads with trust_remote_code=True where xlstm_lm is NOT installed, with
logits and generations equal to the original model; tokenizers of every kind; the
model card; clear errors for broken checkpoints."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch
import yaml

from tests.helpers import assert_close
from tests.hf import ALL_KINDS, isolated_python, make_run, tiny_hf_model
from tools.export_hf import main as export_main
from xlstm_lm.data.tokenizers import HFTokenizer, SentencePieceTokenizer
from xlstm_lm.hf.export import ExportError, byte_tokenizer_fast, export_checkpoint, export_model
from xlstm_lm.models import XLSTMLM

ISOLATED_LOAD = """
import importlib
for name in ("xlstm_lm", "xlstm_lm_kernels"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} is importable: the isolation is broken")
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("export", trust_remote_code=True)
tok = AutoTokenizer.from_pretrained("export", trust_remote_code=True)
inputs = torch.load("inputs.pt")
batch = tok(["def f(x):", "import os"], return_tensors="pt", padding=True)
gen = model.generate(**batch, max_new_tokens=6, do_sample=False)
# the generation invariants, in this interpreter (the folder's own code, this transformers):
# cached == uncached greedy and beam; each row of the left-padded batch == its prompt alone
for opts in (dict(do_sample=False), dict(num_beams=3, num_return_sequences=2, do_sample=False)):
    cached = model.generate(**batch, max_new_tokens=6, **opts)
    assert torch.equal(cached, model.generate(**batch, max_new_tokens=6, use_cache=False, **opts)), opts
for row, text in enumerate(["def f(x):", "import os"]):
    alone = model.generate(**tok(text, return_tensors="pt"), max_new_tokens=6, do_sample=False)
    assert torch.equal(gen[row, -6:], alone[0, -6:]), text
assert "xlstm_lm" not in sys.modules and "xlstm_lm_kernels" not in sys.modules
torch.save({"logits": model(inputs).logits, "gen": gen, "ids": batch["input_ids"],
            "module": type(model).__module__}, "outputs.pt")
"""


def test_export_run_dir_loads_without_xlstm_lm_installed(tmp_path):
    model, ckpt = make_run(tmp_path / "run")
    out = tmp_path / "export"
    assert export_main([str(tmp_path / "run"), str(out)]) == 0
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md", "tokenizer.json",
            "modeling_xlstm_lm.py", "configuration_xlstm_lm.py"} <= files
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "xlstm_lm" and set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    card = (out / "README.md").read_text()
    assert "12.180" in card and "step 40" in card and "120.500" in card and f"{model.num_params():,}" in card
    assert "corpus/" in card and f"pattern `{ALL_KINDS}`" in card

    ids = torch.randint(0, 256, (2, 13))
    torch.save(ids, tmp_path / "inputs.pt")
    result = isolated_python("import sys\n" + ISOLATED_LOAD, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    got = torch.load(tmp_path / "outputs.pt")
    assert got["module"].startswith("transformers_modules."), got["module"]
    with torch.no_grad():
        assert_close(got["logits"], model(ids).logits, rtol=1e-6, atol_floor=1e-6, msg="isolated logits")
        ours = tiny_hf_like(model)
        want = ours.generate(got["ids"], attention_mask=(got["ids"] != 0).long(), max_new_tokens=6, do_sample=False)
    assert torch.equal(got["gen"], want)


def tiny_hf_like(model: XLSTMLM):
    from xlstm_lm.hf.configuration import XLSTMLMConfig
    from xlstm_lm.hf.modeling import XLSTMLMForCausalLM

    hf = XLSTMLMForCausalLM(XLSTMLMConfig(model=model.config, eos_token_id=0, pad_token_id=0))
    hf.model.load_state_dict(model.state_dict())
    return hf.eval()


def test_sentencepiece_and_hf_tokenizers_export_exactly(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = [open(f, encoding="utf-8").read() for f in sorted(glob.glob(os.path.join(os.path.dirname(json.__file__), "*.py")))]
    sample = texts[0][:2000] + "\n   x  =  12345  # héllo wörld 😀\t</s> <s> <unk> <0x41>  \n "
    sp = SentencePieceTokenizer.train(texts, vocab_size=400)
    hf_dir = tmp_path / "hf_tok"
    byte_tokenizer_fast().save_pretrained(hf_dir)
    for name, tokenizer in (("sp", sp), ("hf", HFTokenizer(str(hf_dir)))):
        model = tiny_hf_model("ms", dtype=torch.float32, vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.eos_id)
        out = export_model(model, tokenizer, tmp_path / name)
        tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
        ids = tok(sample)["input_ids"]
        assert ids == tokenizer.encode(sample), name
        assert tok.decode(ids) == tokenizer.decode(ids) == sample, name
        assert tok.eos_token_id == tokenizer.eos_id, name
        loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
        x = torch.tensor([ids[:20]])
        assert_close(loaded(x).logits, model(x).logits, rtol=0, atol_floor=0, msg=name)


def test_broken_checkpoints_give_clear_errors(tmp_path, capsys):
    _, ckpt = make_run(tmp_path / "run", pattern="ml")
    cfg_path = ckpt / "config.yaml"
    good = yaml.safe_load(cfg_path.read_text())

    # a config key from a newer version
    cfg_path.write_text(yaml.safe_dump({**good, "model": {**good["model"], "rotary_dim": 8}}))
    with pytest.raises(ExportError, match=r"model\.rotary_dim"):
        export_checkpoint(ckpt, tmp_path / "a")
    # weights of another architecture
    cfg_path.write_text(yaml.safe_dump({**good, "model": {**good["model"], "pattern": "sl"}}))
    with pytest.raises(ExportError, match="do not fit the architecture"):
        export_checkpoint(ckpt, tmp_path / "b")
    cfg_path.write_text(yaml.safe_dump({**good, "model": {**good["model"], "d_model": 64}}))
    with pytest.raises(ExportError, match="do not fit the architecture"):
        export_checkpoint(ckpt, tmp_path / "c")
    # missing tokenizer files (through the CLI: exit code 1 and the reason)
    cfg_path.write_text(yaml.safe_dump(good))
    for f in (ckpt / "tokenizer").iterdir():
        f.unlink()
    assert export_main([str(ckpt), str(tmp_path / "d")]) == 1
    assert "tokenizer" in capsys.readouterr().err
    # neither a run dir nor a checkpoint; non-empty output dir
    with pytest.raises(ExportError, match="neither a run dir"):
        export_checkpoint(tmp_path, tmp_path / "e")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "x").write_text("")
    assert export_main([str(ckpt), str(tmp_path / "f")]) == 2
