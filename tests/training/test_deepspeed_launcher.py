"""`train.py` under the `deepspeed` launcher itself (which appends --local_rank=N to the
script's arguments), on CPU: 2 ranks of ZeRO-2 give the per-step losses of one process
with the same global batch, both as one node (`deepspeed --num_gpus 2`) and as two
nodes of one rank each. A real multi-node run (`deepspeed --hostfile H`) reaches the
other hosts over ssh/pdsh, which CI has not; there each node runs the per-node launcher
`python -m deepspeed.launcher.launch --world_info=... --node_rank=K`, which is what the
two-node case here starts directly, both "nodes" on this machine."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

from xlstm_lm.data.shards import write_shards  # noqa: E402
from xlstm_lm.data.tokenizers import ByteTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
COMMON = [
    "--config", "configs/deepspeed/zero2.yaml", "train.distributed.precision=fp32", "train.max_steps=3",
    "train.batch_size=4", "train.seq_len=32", "train.sample_tokens=0", "train.warmup_steps=1", "model.d_model=32",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "losses.jsonl").read_text().splitlines()]


@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher script is not on PATH")
def test_deepspeed_launcher_one_and_two_nodes_match_one_process(tmp_path):
    docs = [f"doc {i} " + "abc def " * (i % 9 + 1) for i in range(300)]
    write_shards(docs, ByteTokenizer(), tmp_path / "shards")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    data = f"data.shards={tmp_path / 'shards'}"

    # one process, 2 micro steps of 2 rows: the rows ranks 0 and 1 read in one step
    single = tmp_path / "single"
    cmd = [sys.executable, "train.py", *COMMON, data, f"train.run_dir={single}",
           "train.distributed.enabled=true", "train.distributed.grad_accum=2"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**env, "MASTER_PORT": str(_free_port())},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    port = str(_free_port())
    one_node = tmp_path / "one-node"
    cmd = [shutil.which("deepspeed"), "--num_gpus", "2", "--master_port", port,
           "train.py", *COMMON, data, f"train.run_dir={one_node}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--local_rank=1" in proc.stdout + proc.stderr  # the launcher's argument reached train.py
    assert "dist_world_size=2" in proc.stdout + proc.stderr

    # two nodes with one rank each, as the hostfile launcher starts them on each host
    two_nodes = tmp_path / "two-nodes"
    world = base64.urlsafe_b64encode(json.dumps({"node-a": [0], "node-b": [0]}).encode()).decode()
    port = str(_free_port())
    nodes = [
        subprocess.Popen(
            [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world}", f"--node_rank={k}",
             "--master_addr=127.0.0.1", f"--master_port={port}", "train.py", *COMMON, data,
             f"train.run_dir={two_nodes}"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for k in (0, 1)
    ]
    outs = [n.communicate(timeout=240)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    # one process group of 2 ranks (two independent 1-rank runs would also give these losses)
    assert all("dist_world_size=2" in out for out in outs)
    assert "global_rank_mapping" in outs[1] and "'node-b': [1]" in outs[1]

    ref = _losses(single)
    assert len(ref) == 3 and ref[-1] < ref[0]
    for got in (_losses(one_node), _losses(two_nodes)):
        # the same fp32 reassociation bound as tests/training/test_distributed.py
        assert got == pytest.approx(ref, rel=1e-6, abs=0)
