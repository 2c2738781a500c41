"""`train.py` under `accelerate launch` with the configs in configs/accelerate/, on CPU (gloo).

Two ranks of ZeRO-2 started by accelerate give the per-step losses of one process with
the same global batch: with cpu_2proc.yaml (what CI uses), with multi_node.yaml as two
"nodes" of one rank each on this machine, and with the DeepSpeed-type config. Launcher
settings that contradict the run config (ZeRO stage, precision, ...) stop the run
before any training (xlstm_lm/training/launch_env.py), as does accelerate's MULTI_CPU
mode, which starts one process without RANK/WORLD_SIZE.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
pytest.importorskip("accelerate")

from xlstm_lm.config_utils import ConfigError, apply_overrides, load_yaml  # noqa: E402
from xlstm_lm.data.shards import write_shards  # noqa: E402
from xlstm_lm.data.tokenizers import ByteTokenizer  # noqa: E402
from xlstm_lm.training import distributed  # noqa: E402
from xlstm_lm.training.config import build_run_config  # noqa: E402
from xlstm_lm.training.launch_env import check_launch_env, launch_problems  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ACCEL = ROOT / "configs" / "accelerate"
ZERO2 = ROOT / "configs" / "deepspeed" / "zero2.yaml"
# configs/deepspeed/zero2.yaml shrunk to a few CPU steps; batch 4 = 2 ranks x 2 rows
SHRINK = [
    "train.distributed.precision=fp32", "train.max_steps=3", "train.batch_size=4", "train.seq_len=32",
    "train.sample_tokens=0", "train.warmup_steps=1", "train.log_every=1", "model.d_model=32",
    "model.num_blocks=2", "model.pattern=ms",
]
# `python -m accelerate.commands.launch` is `accelerate launch` run by this interpreter
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path) -> dict[str, str]:
    # nothing from an outer launcher or the user's accelerate setup leaks in
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC_"))}
    return {**env, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT),
            "HF_HOME": str(tmp / "hf_home")}


def _train_args(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train.py", "--config", str(ZERO2), *SHRINK, f"data.shards={shards}", f"train.run_dir={run_dir}", *extra]


def _run(cmd: list[str], env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    if ok:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "losses.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Token shards and the losses of one process (2 micro steps of 2 rows per step)."""
    tmp = tmp_path_factory.mktemp("launchers")
    docs = [f"doc {i} " + "abc def " * (i % 9 + 1) for i in range(300)]
    write_shards(docs, ByteTokenizer(), tmp / "shards")
    env = {**_env(tmp), "MASTER_PORT": str(_free_port())}
    run_dir = tmp / "single"
    _run([sys.executable, *_train_args(tmp / "shards", run_dir, "train.distributed.enabled=true",
                                       "train.distributed.zero_stage=0", "train.distributed.grad_accum=2")], env)
    losses = _losses(run_dir)
    assert len(losses) == 3 and losses[-1] < losses[0]
    return tmp / "shards", losses


def test_accelerate_cpu_2proc_zero2_matches_one_process(reference, tmp_path):
    shards, ref = reference
    run_dir = tmp_path / "run"
    _run([*LAUNCH, "--config_file", str(ACCEL / "cpu_2proc.yaml"), *_train_args(shards, run_dir)], _env(tmp_path))
    # fp32 gradients of 2 ranks reduced in another order than one process's accumulation
    assert _losses(run_dir) == pytest.approx(ref, rel=1e-6, abs=0)
    # rank 0's metrics: JSONL, TensorBoard events, and the end-of-run curve
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((run_dir / "deepspeed" / "step_0000003").glob("*optim_states.pt"))) == 2


def test_accelerate_multi_node_config_as_two_local_nodes_matches_one_process(reference, tmp_path):
    shards, ref = reference
    run_dir = tmp_path / "run"
    port = str(_free_port())
    procs = []
    for node in (0, 1):
        # multi_node.yaml as shipped, pointed at this machine: 2 nodes x 1 process
        cmd = [*LAUNCH, "--config_file", str(ACCEL / "multi_node.yaml"), "--machine_rank", str(node),
               "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--num_processes", "2",
               "--mixed_precision", "no",  # the file says bf16 for GPUs; this run is fp32 on CPU
               *_train_args(shards, run_dir)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out[-4000:]
    assert _losses(run_dir) == pytest.approx(ref, rel=1e-6, abs=0)


def _require_hook() -> None:
    # launch_env.preflight runs in the DeepSpeed loop once distributed.py calls it
    if "preflight(" not in inspect.getsource(distributed.train_distributed):
        pytest.skip("distributed.train_distributed does not call launch_env.preflight(cfg) yet (lead: one line)")


def test_accelerate_deepspeed_type_config_matches_one_process(reference, tmp_path):
    shards, ref = reference
    # the shipped file restates configs/deepspeed/zero2.yaml; here on 2 CPU processes in fp32
    run_dir = tmp_path / "run"
    _run([*LAUNCH, "--config_file", str(ACCEL / "deepspeed_zero2.yaml"), "--num_processes", "2",
          "--mixed_precision", "no", "--main_process_port", str(_free_port()), *_train_args(shards, run_dir)],
         _env(tmp_path))
    assert _losses(run_dir) == pytest.approx(ref, rel=1e-6, abs=0)


def test_accelerate_deepspeed_settings_that_differ_are_refused(reference, tmp_path):
    _require_hook()
    shards, _ = reference
    bad = tmp_path / "bad"
    # ZeRO-3 and (the file's) bf16 against the run config's ZeRO-2 in fp32
    proc = _run([*LAUNCH, "--config_file", str(ACCEL / "deepspeed_zero2.yaml"), "--num_processes", "2",
                 "--zero_stage", "3", "--main_process_port", str(_free_port()), *_train_args(shards, bad)],
                _env(tmp_path), ok=False)
    assert proc.returncode != 0
    assert "zero_stage: accelerate asks for 3 but train.distributed.zero_stage is 2" in proc.stderr
    assert "mixed_precision: accelerate asks for 'bf16' but train.distributed.precision is 'fp32'" in proc.stderr
    assert not (bad / "losses.jsonl").exists()


def test_accelerate_multi_cpu_mode_is_refused(reference, tmp_path):
    _require_hook()
    shards, _ = reference
    # --cpu (= distributed_type MULTI_CPU) starts ONE process without RANK/WORLD_SIZE
    proc = _run([*LAUNCH, "--cpu", "--num_processes", "2", "--main_process_port", str(_free_port()),
                 *_train_args(shards, tmp_path / "run")], _env(tmp_path), ok=False)
    assert proc.returncode != 0
    assert "error: the accelerate launch settings do not match" in proc.stderr
    assert "MULTI_CPU / --cpu mode with several processes" in proc.stderr and "cpu_2proc.yaml" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# --- the checks themselves, on synthetic launcher environments (no processes) ---

def _cfg(*overrides: str):
    return build_run_config(apply_overrides(load_yaml(ZERO2), list(overrides)))


MULTI_GPU = {"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_DYNAMO_BACKEND": "NO", "WORLD_SIZE": "8",
             "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
DEEPSPEED = {"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "8",
             "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1",
             "ACCELERATE_GRADIENT_CLIPPING": "1.0", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none",
             "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false"}


def test_matching_launcher_settings_pass():
    cfg = _cfg()  # zero2.yaml: ZeRO-2, bf16, grad_accum 1, clip 1.0 (from tiny.yaml)
    assert launch_problems(cfg, True, {}) == []  # torchrun / deepspeed: nothing to compare
    assert launch_problems(cfg, True, MULTI_GPU) == []
    assert launch_problems(cfg, True, DEEPSPEED) == []
    assert launch_problems(_cfg("train.distributed.precision=fp32"), True,
                           {**MULTI_GPU, "ACCELERATE_MIXED_PRECISION": "no"}) == []
    assert launch_problems(_cfg("train.dtype=bfloat16"), False, {"ACCELERATE_MIXED_PRECISION": "bf16"}) == []


@pytest.mark.parametrize(
    "cfg_overrides, distributed, env, message",
    [
        ([], True, {**MULTI_GPU, "ACCELERATE_MIXED_PRECISION": "no"},
         r"mixed_precision: accelerate asks for 'no' but train.distributed.precision is 'bf16' "
         r"\(set mixed_precision: bf16 in the accelerate config, or train.distributed.precision=fp32\)"),
        ([], True, {**MULTI_GPU, "ACCELERATE_MIXED_PRECISION": "fp8"}, "'fp8', which the DeepSpeed loop does not"),
        ([], True, {**MULTI_GPU, "ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"},
         "dynamo_backend: accelerate asks for 'INDUCTOR' but train.distributed.compile is False"),
        ([], True, {**MULTI_GPU, "ACCELERATE_USE_FSDP": "true"}, "asks for FSDP"),
        ([], True, {**DEEPSPEED, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
         r"zero_stage: accelerate asks for 3 but train.distributed.zero_stage is 2 \(set zero_stage: 2 .* "
         r"or train.distributed.zero_stage=3\)"),
        ([], True, {**DEEPSPEED, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"},
         "gradient_accumulation_steps: accelerate asks for 4 but train.distributed.grad_accum is 1"),
        (["train.distributed.grad_clip=0.5"], True, DEEPSPEED, "gradient_clipping: accelerate asks for 1.0 .* is 0.5"),
        ([], True, {**DEEPSPEED, "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"},
         "offload_optimizer_device: accelerate asks for 'cpu' but train.distributed.offload_optimizer is False"),
        ([], True, {**DEEPSPEED, "ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, "remove deepspeed_config_file"),
        ([], True, {**DEEPSPEED, "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true"}, "zero3_init_flag: true is not supported"),
        ([], False, {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"},
         "MULTI_CPU / --cpu mode with several processes"),
        ([], False, {"ACCELERATE_MIXED_PRECISION": "bf16"}, "mixed_precision: .* train.dtype is 'float32'"),
        (["train.dtype=bfloat16"], False, {**DEEPSPEED, "WORLD_SIZE": "1"},
         "asks for DeepSpeed but this process runs the single-process trainer"),
    ],
)
def test_contradicting_launcher_settings_are_refused(cfg_overrides, distributed, env, message):
    with pytest.raises(ConfigError, match=message):
        check_launch_env(_cfg(*cfg_overrides), distributed, env)


def test_all_differences_are_listed_at_once():
    env = {**DEEPSPEED, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_MIXED_PRECISION": "no"}
    problems = launch_problems(_cfg(), True, env)
    assert [p.split(":")[0] for p in problems] == ["mixed_precision", "zero_stage"]
