"""Side-by-side speed of the PyTorch paths (issue 13): our reference forms against their peers.

    python tools/bench_cpu.py                    # every comparison, one thread, default device (cuda if available)
    python tools/bench_cpu.py --dry-run          # tiny shapes, a few seconds: checks the script end to end
    python tools/bench_cpu.py --baseline HEAD    # also time the kernels and classic cells of a git revision
    python tools/bench_cpu.py --only slstm --threads 2 --device cpu

The PyTorch forms run on every CPU, in every test and in exported HF models, so their
speed is measured here with the same care as the Triton kernels' (protocol:
../shared/BENCHMARKS.md). Comparisons, all float32, each a ratio ours / peer (< 1: ours
is faster):

  mlstm-scaling  chunkwise fwd+bwd at T = 1k, 4k, 8k, 16k (B 1, H 4, Dqk 64, Dv 128,
                 chunk 64); ratio T16k / T1k (a linear backward gives 16; target <= 20)
  mlstm-4k       chunkwise fwd and fwd+bwd vs ``mlstm_kernels``' native autograd chunkwise
                 (``chunkwise--native_autograd``), same shapes at T 4096
  slstm          fwd+bwd vs the ``xlstm`` package's vanilla sLSTM (its ``slstm_forward``
                 loop with the ``slstm`` pointwise cell: the ``backend="vanilla"`` path), B 4,
                 T 256, 4 heads, hidden 256; and our T 1024 / T 256 (linear: 4)
  lstm-block     train step (forward, backward, AdamW step) of the ``lstm`` block
                 (``LSTMForget``) vs the same block on ``torch.nn.LSTM`` (``cudnn_lstm``),
                 d 256, T 128, B 16, same weights

Protocol: every contender runs in this process on the same device. Before any timing
each is checked against an independent implementation on the same inputs: outputs and
every input gradient (for the block: outputs, input and cell-weight gradients), relative
RMS error <= ``TOL``; the points of the scaling curve are checked in the forward against
the peer at each T, and with ``--baseline`` outputs and gradients against the baseline.
A contender that fails is reported and not timed (exit code 1). That checking call is
also the warm-up. Then ``--reps`` rounds in which every contender of a comparison runs
once, in an order rotated each round, so that drift of the machine hits all alike;
median, min and max per contender. Timing: ``time.perf_counter`` around each call,
with ``torch.cuda.synchronize`` on CUDA (the interleaving rules out ``do_bench``); peak
memory on CUDA. Inputs are drawn at random (never zeros). ``--threads`` (default 1)
sets torch's intra-op threads: each contender runs alone, with that many threads.

``--baseline REV`` extracts ``kernels/`` and ``xlstm_lm/layers/classic.py`` of a git
revision (``git archive``) and imports them beside the working tree's, as extra
contenders ``baseline@REV`` checked against ours: before/after numbers of a change in
one run. A JSON record goes to ``benchmarks/results/pytorch-paths-<device>-<date>.json``
(dry runs: ``runs/bench-dry-run/``); the table is printed last.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import io
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_record import write_record  # noqa: E402

from xlstm_lm_kernels.mlstm import mlstm_chunkwise_torch  # noqa: E402
from xlstm_lm_kernels.slstm import slstm_recurrent  # noqa: E402

#: relative RMS error allowed between two float32 implementations of the same function
#: (measured ~1e-7 on outputs and <= 1e-6 on gradients for every pair here)
TOL = 1e-4
COMPARISONS = ("mlstm-scaling", "mlstm-4k", "slstm", "lstm-block")

FULL = SimpleNamespace(
    mlstm=dict(B=1, H=4, Dqk=64, Dv=128, chunk=64), mlstm_Ts=(1024, 4096, 8192, 16384), mlstm_T=4096,
    slstm=dict(B=4, H=4, Dh=64), slstm_Ts=(256, 1024), block=dict(d=256, T=128, B=16), reps=7,
)
DRY = SimpleNamespace(
    mlstm=dict(B=1, H=2, Dqk=16, Dv=32, chunk=16), mlstm_Ts=(64, 128, 256, 512), mlstm_T=128,
    slstm=dict(B=2, H=2, Dh=8), slstm_Ts=(32, 128), block=dict(d=32, T=16, B=2), reps=2,
)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, 2 rounds: checks the script end to end")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda if available")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every contender (default 1)")
    ap.add_argument("--reps", type=int, default=None, help="timed rounds per comparison (default 7; dry run 2)")
    ap.add_argument("--only", default=",".join(COMPARISONS), help=f"comma list of {', '.join(COMPARISONS)}")
    ap.add_argument("--baseline", default=None, metavar="REV", help="also time kernels/ and classic.py of this git revision")
    ap.add_argument("--out", default=None, help="folder for the JSON record")
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- measuring


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def max_rel_err(actual: list, expected: list) -> float:
    if len(actual) != len(expected):
        raise ValueError(f"{len(actual)} tensors to check against {len(expected)}")
    return max(rel_err(a, e) for a, e in zip(actual, expected))


class Bench:
    """Runs contenders on one device: checking calls, then interleaved timed rounds."""

    def __init__(self, device: torch.device, reps: int, only: set[str]):
        self.device, self.reps, self.only = device, reps, only
        self.rows: list[dict] = []
        self.ratios: list[dict] = []
        self.failed: list[str] = []

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def first_call(self, fn):
        """One untimed call (the warm-up); returns its result and the peak memory on CUDA."""
        if self.device.type != "cuda":
            return fn(), None
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        out = fn()
        self.sync()
        return out, (torch.cuda.max_memory_allocated(self.device) - base) / 2**20

    def time_interleaved(self, calls: dict) -> dict:
        """{name: ms stats}: ``reps`` rounds, each calling every contender once, order rotated."""
        names = list(calls)
        times = {name: [] for name in names}
        for r in range(self.reps):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                self.sync()
                t0 = time.perf_counter()
                calls[name]()
                self.sync()
                times[name].append((time.perf_counter() - t0) * 1e3)
        return {
            name: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "n": len(t)}
            for name, t in times.items()
        }

    def compare(self, case: str, contenders: list[dict]) -> dict:
        """Check then time ``contenders``: dicts with ``name``, ``run`` (the timed call, which
        returns the tensors to check), optional ``check`` (a call returning ``(tensors,
        reference name)`` instead of checking ``run``'s), ``ref`` (name of the contender
        whose ``run`` results these must match) and descriptive keys kept in the row."""
        results, rows, calls = {}, {}, {}
        for c in contenders:
            row = {k: v for k, v in c.items() if k not in ("run", "check", "ref")}
            row["case"] = case
            rows[c["name"]] = row
            if "skipped" in c:
                continue
            try:
                results[c["name"]], row["peak_mb"] = self.first_call(c["run"])
            except Exception as e:  # a peer that fails must not hide the others
                row["skipped"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        for c in contenders:
            row = rows[c["name"]]
            if "skipped" in row:
                continue
            pair = None
            if "check" in c:
                pair, row["checked_against"] = c["check"]()
            elif c.get("ref") in results:
                pair, row["checked_against"] = (results[c["name"]], results[c["ref"]]), c["ref"]
            if pair is not None:
                row["rel_err"] = max_rel_err(*pair)
                row["tol"] = TOL
                if not row["rel_err"] <= TOL:
                    row["skipped"] = f"differs from {row['checked_against']}: rel err {row['rel_err']:.2e} > {TOL}"
                    self.failed.append(f"{case}: {c['name']}")
                    continue
            calls[c["name"]] = c["run"]
        timings = self.time_interleaved(calls) if calls else {}
        for name, row in rows.items():
            if name in timings:
                row["time"] = timings[name]
            self.rows.append(row)
        return {name: t["median_ms"] for name, t in timings.items()}

    def ratio(self, name: str, medians: dict, ours: str, peer: str, target: float | None = None, note: str = "") -> None:
        if ours not in medians or peer not in medians:
            self.ratios.append({"name": name, "ours": ours, "peer": peer, "value": None, "note": "not timed"})
            return
        value = medians[ours] / medians[peer]
        self.ratios.append({"name": name, "ours": ours, "peer": peer, "value": value, "target": target, "note": note})


# ----------------------------------------------------------------------------- contenders


def load_baseline(rev: str) -> SimpleNamespace:
    """``kernels/`` (as its own package) and ``xlstm_lm/layers/classic.py`` of git revision ``rev``."""
    archive = subprocess.run(
        ["git", "archive", rev, "kernels", "xlstm_lm/layers/classic.py"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    name = "bench_baseline_kernels"
    spec = importlib.util.spec_from_file_location(
        name, folder / "kernels" / "__init__.py", submodule_search_locations=[str(folder / "kernels")]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    classic_spec = importlib.util.spec_from_file_location("bench_baseline_classic", folder / "xlstm_lm/layers/classic.py")
    classic = importlib.util.module_from_spec(classic_spec)
    classic_spec.loader.exec_module(classic)
    commit = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    return SimpleNamespace(
        label=f"baseline@{rev}",
        commit=commit,
        mlstm_chunkwise_torch=importlib.import_module(f"{name}.mlstm").mlstm_chunkwise_torch,
        slstm_recurrent=importlib.import_module(f"{name}.slstm").slstm_recurrent,
        classic=classic,
    )


def fwd_bwd(fn, inputs: list, weight: torch.Tensor):
    """A call running ``fn(*leaves)`` forward and backward (loss: sum of weight * output);
    returns the output and every input gradient."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]

    def run():
        for x in leaves:
            x.grad = None
        out = fn(*leaves)
        (out * weight).sum().backward()
        return [out.detach(), *(x.grad for x in leaves)]

    return run


def forward_only(fn, inputs: list):
    def run():
        with torch.no_grad():
            return [fn(*inputs)]

    return run


def mlstm_inputs(T: int, B: int, H: int, Dqk: int, Dv: int, device, seed: int) -> list:
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, H, T, Dqk, device=device, generator=g)
    k = torch.randn(B, H, T, Dqk, device=device, generator=g)
    v = torch.randn(B, H, T, Dv, device=device, generator=g)
    i = torch.randn(B, H, T, device=device, generator=g)
    f = 3.0 + torch.randn(B, H, T, device=device, generator=g)
    return [q, k, v, i, f]


def mlstm_kernels_native():
    try:
        from mlstm_kernels.torch.chunkwise.native import mlstm_chunkwise__native_autograd
    except Exception as e:  # noqa: BLE001
        return f"mlstm_kernels not importable: {type(e).__name__}: {e}"
    return mlstm_chunkwise__native_autograd


def bench_mlstm(bench: Bench, shapes: SimpleNamespace, base) -> None:
    s = shapes.mlstm
    chunk = s["chunk"]
    peer = mlstm_kernels_native()

    def ours(q, k, v, i, f):
        return mlstm_chunkwise_torch(q, k, v, i, f, chunk_size=chunk)

    def theirs(q, k, v, i, f):
        return peer(q, k, v, i, f, chunk_size=chunk)

    def baseline(q, k, v, i, f):
        return base.mlstm_chunkwise_torch(q, k, v, i, f, chunk_size=chunk)

    shape = {k: v for k, v in s.items() if k != "chunk"} | {"chunk": chunk, "dtype": "float32"}
    if "mlstm-scaling" in bench.only:
        contenders = []
        for T in shapes.mlstm_Ts:
            x = mlstm_inputs(T, s["B"], s["H"], s["Dqk"], s["Dv"], bench.device, seed=T)
            w = torch.randn(s["B"], s["H"], T, s["Dv"], device=bench.device)
            row = {"name": f"ours T{T}", "T": T, "mode": "fwd+bwd", "shape": shape, "run": fwd_bwd(ours, x, w)}
            if not isinstance(peer, str):
                # forward against the peer at every T (its backward is not timed here)
                row["check"] = lambda x=x: (
                    (forward_only(ours, x)(), forward_only(theirs, x)()),
                    "mlstm_kernels chunkwise--native_autograd (forward)",
                )
            contenders.append(row)
            if base is not None:
                contenders.append({"name": f"{base.label} T{T}", "T": T, "mode": "fwd+bwd", "shape": shape,
                                   "run": fwd_bwd(baseline, x, w), "ref": f"ours T{T}"})
        med = bench.compare("mlstm-scaling", contenders)
        T0, T1 = shapes.mlstm_Ts[0], shapes.mlstm_Ts[-1]
        target = 1.25 * T1 / T0
        note = f"linear: {T1 / T0:.0f}"
        bench.ratio(f"mlstm chunkwise fwd+bwd T{T1}/T{T0}", med, f"ours T{T1}", f"ours T{T0}", target, note)
        if base is not None:
            bench.ratio(f"baseline mlstm chunkwise fwd+bwd T{T1}/T{T0}", med, f"{base.label} T{T1}", f"{base.label} T{T0}", None, note)
            for T in shapes.mlstm_Ts:
                bench.ratio(f"mlstm chunkwise fwd+bwd T{T}: ours/baseline", med, f"ours T{T}", f"{base.label} T{T}")
    if "mlstm-4k" in bench.only:
        T = shapes.mlstm_T
        x = mlstm_inputs(T, s["B"], s["H"], s["Dqk"], s["Dv"], bench.device, seed=1)
        w = torch.randn(s["B"], s["H"], T, s["Dv"], device=bench.device)
        peer_name = "mlstm_kernels chunkwise--native_autograd"
        for mode, make in (("fwd", lambda fn: forward_only(fn, x)), ("fwd+bwd", lambda fn: fwd_bwd(fn, x, w))):
            contenders = [{"name": "ours", "T": T, "mode": mode, "shape": shape, "run": make(ours), "ref": peer_name}]
            if isinstance(peer, str):
                contenders.append({"name": peer_name, "skipped": peer})
            else:
                contenders.append({"name": peer_name, "T": T, "mode": mode, "shape": shape, "run": make(theirs)})
            if base is not None:
                contenders.append({"name": base.label, "T": T, "mode": mode, "shape": shape, "run": make(baseline), "ref": "ours"})
            med = bench.compare(f"mlstm-4k {mode}", contenders)
            bench.ratio(f"mlstm chunkwise T{T} {mode}: ours/mlstm_kernels native", med, "ours", peer_name)
            if base is not None:
                bench.ratio(f"mlstm chunkwise T{T} {mode}: ours/baseline", med, "ours", base.label)


def xlstm_vanilla_slstm():
    try:
        from xlstm.blocks.slstm.src.vanilla import slstm_forward
        from xlstm.blocks.slstm.src.vanilla.slstm import slstm_forward_pointwise
    except Exception as e:  # noqa: BLE001
        return f"xlstm not importable: {type(e).__name__}: {e}"

    def run(wx, R, b):
        """Our layouts in, our layout out (see tests/kernels/test_slstm_ref.py): x (T, B, 4*H*Dh)
        gate-major, R_int[h, g*Dh + d, k] = R[h, k, g, d], b_int[g, h, d] = b[h, g, d]."""
        B, T, _, H, Dh = wx.shape
        x_ref = wx.permute(1, 0, 2, 3, 4).reshape(T, B, 4 * H * Dh)
        R_ref = R.permute(0, 2, 3, 1).reshape(H, 4 * Dh, Dh)
        b_ref = b.permute(1, 0, 2).reshape(4 * H * Dh)
        states0 = torch.zeros(4, B, H * Dh, device=wx.device, dtype=wx.dtype)
        states_all, _, _ = slstm_forward(x_ref, states0, R_ref, b_ref, slstm_forward_pointwise)
        return states_all[0, 1:].reshape(T, B, H, Dh).permute(1, 0, 2, 3)

    return run


def bench_slstm(bench: Bench, shapes: SimpleNamespace, base) -> None:
    s = shapes.slstm
    B, H, Dh = s["B"], s["H"], s["Dh"]
    peer = xlstm_vanilla_slstm()
    peer_name = "xlstm vanilla sLSTM"
    shape = dict(s, hidden=H * Dh, dtype="float32")

    def ours(wx, R, b):
        return slstm_recurrent(wx, R, b)[0]

    contenders = []
    for n, T in enumerate(shapes.slstm_Ts):
        g = torch.Generator(device=bench.device).manual_seed(T)
        wx = torch.randn(B, T, 4, H, Dh, device=bench.device, generator=g)
        R = Dh**-0.5 * torch.randn(H, Dh, 4, Dh, device=bench.device, generator=g)
        b = torch.randn(H, 4, Dh, device=bench.device, generator=g)
        w = torch.randn(B, T, H, Dh, device=bench.device, generator=g)
        x = [wx, R, b]
        row = {"name": f"ours T{T}", "T": T, "mode": "fwd+bwd", "shape": shape, "run": fwd_bwd(ours, x, w)}
        if n == 0:
            # the peer is timed at the first T; there it checks outputs and all gradients
            row["ref"] = f"{peer_name} T{T}"
            if isinstance(peer, str):
                contenders.append({"name": f"{peer_name} T{T}", "skipped": peer})
            else:
                contenders.append({"name": f"{peer_name} T{T}", "T": T, "mode": "fwd+bwd", "shape": shape,
                                   "run": fwd_bwd(peer, x, w)})
        elif not isinstance(peer, str):
            row["check"] = lambda x=x: ((forward_only(ours, x)(), forward_only(peer, x)()), f"{peer_name} (forward)")
        contenders.append(row)
        if base is not None:
            contenders.append({"name": f"{base.label} T{T}", "T": T, "mode": "fwd+bwd", "shape": shape,
                               "run": fwd_bwd(lambda wx, R, b: base.slstm_recurrent(wx, R, b)[0], x, w),
                               "ref": f"ours T{T}"})
    med = bench.compare("slstm", contenders)
    T0, T1 = shapes.slstm_Ts
    bench.ratio(f"slstm fwd+bwd T{T0}: ours/xlstm vanilla", med, f"ours T{T0}", f"{peer_name} T{T0}")
    bench.ratio(f"slstm fwd+bwd T{T1}/T{T0}", med, f"ours T{T1}", f"ours T{T0}", 1.25 * T1 / T0, f"linear: {T1 // T0}")
    if base is not None:
        bench.ratio(f"baseline slstm fwd+bwd T{T1}/T{T0}", med, f"{base.label} T{T1}", f"{base.label} T{T0}", None, f"linear: {T1 // T0}")
        for T in shapes.slstm_Ts:
            bench.ratio(f"slstm fwd+bwd T{T}: ours/baseline", med, f"ours T{T}", f"{base.label} T{T}")


def bench_lstm_block(bench: Bench, shapes: SimpleNamespace, base) -> None:
    from xlstm_lm.config import ModelConfig
    from xlstm_lm.layers.classic import LSTMForget
    from xlstm_lm.models.blocks import build_block

    d, T, B = shapes.block["d"], shapes.block["T"], shapes.block["B"]
    cfg = ModelConfig(d_model=d, num_blocks=1, pattern="l")
    torch.manual_seed(0)
    peer = build_block(cfg, 0, "cudnn_lstm").to(bench.device)
    ours = copy.deepcopy(peer)
    ours.cell = LSTMForget.from_torch(peer.cell.lstm)
    blocks = {"ours: lstm block (LSTMForget)": ours, "lstm block on torch.nn.LSTM": peer}
    if base is not None:
        old = copy.deepcopy(peer)
        old.cell = base.classic.LSTMForget.from_torch(peer.cell.lstm)
        blocks[f"{base.label}: lstm block"] = old
    g = torch.Generator(device=bench.device).manual_seed(T)
    x0 = torch.randn(B, T, d, device=bench.device, generator=g)
    w = torch.randn(B, T, d, device=bench.device, generator=g)

    def cell_weights(block) -> list:
        # LSTMForget's weight_ih, ... are torch.nn.LSTM's weight_ih_l0, ...
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        if isinstance(block.cell, LSTMForget) or base is not None and isinstance(block.cell, base.classic.LSTMForget):
            return [getattr(block.cell, n) for n in names]
        return [getattr(block.cell.lstm, f"{n}_l0") for n in names]

    def train_step(block):
        x = x0.clone().requires_grad_()
        opt = torch.optim.AdamW(block.parameters(), lr=1e-4)

        def run():
            opt.zero_grad(set_to_none=True)
            x.grad = None
            y, _ = block(x)
            (y * w).mean().backward()
            # checked: output, input gradient and cell-weight gradients (before this step's update)
            checked = [y.detach(), x.grad, *(p.grad.clone() for p in cell_weights(block))]
            opt.step()
            return checked

        return run

    shape = {"d": d, "T": T, "B": B, "dtype": "float32"}
    names = list(blocks)
    contenders = [
        {"name": name, "mode": "train step", "shape": shape, "run": train_step(block),
         **({"ref": names[1]} if name != names[1] else {})}
        for name, block in blocks.items()
    ]
    med = bench.compare("lstm-block", contenders)
    bench.ratio(f"lstm block train step d{d} T{T} B{B}: ours/nn.LSTM", med, names[0], names[1])
    if base is not None:
        bench.ratio(f"lstm block train step d{d} T{T} B{B}: ours/baseline", med, names[0], names[2])


# ----------------------------------------------------------------------------- main


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("mlstm_kernels", "xlstm"):
        try:
            out[mod] = getattr(importlib.import_module(mod), "__version__", "installed")
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


def print_table(bench: Bench) -> None:
    print(f"\n{'case':22s} {'contender':44s} {'mode':10s} {'median ms':>10s} {'min ms':>9s} {'max ms':>9s}  check")
    for r in bench.rows:
        check = f"rel err {r['rel_err']:.1e} vs {r['checked_against']}" if "rel_err" in r else "-"
        if "time" not in r:
            print(f"{r['case']:22s} {r['name']:44s} {r.get('mode', '-'):10s} {'-':>10s} {'-':>9s} {'-':>9s}  {r.get('skipped', '')}")
            continue
        t = r["time"]
        print(f"{r['case']:22s} {r['name']:44s} {r['mode']:10s} {t['median_ms']:10.2f} {t['min_ms']:9.2f} {t['max_ms']:9.2f}  {check}")
    print(f"\n{'ratio (medians; < 1: the first is faster)':60s} {'value':>8s}  {'target':>7s}  note")
    for r in bench.ratios:
        value = f"{r['value']:8.3f}" if r["value"] is not None else f"{'-':>8s}"
        target = f"<= {r['target']:.0f}" if r.get("target") else ""
        print(f"{r['name']:60s} {value}  {target:>7s}  {r.get('note', '')}")


def main(argv=None) -> int:
    args = parse_args(argv)
    only = set(args.only.split(","))
    if only - set(COMPARISONS):
        print(f"error: unknown comparisons {sorted(only - set(COMPARISONS))}; use {', '.join(COMPARISONS)}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    shapes = DRY if args.dry_run else FULL
    bench = Bench(device, args.reps or shapes.reps, only)
    base = load_baseline(args.baseline) if args.baseline else None
    if only & {"mlstm-scaling", "mlstm-4k"}:
        bench_mlstm(bench, shapes, base)
    if "slstm" in only:
        bench_slstm(bench, shapes, base)
    if "lstm-block" in only:
        bench_lstm_block(bench, shapes, base)
    print_table(bench)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{platform.machine()}"
    record = {
        "versions": versions(),
        "cpu": cpu_model(),
        "threads": args.threads,
        "reps": bench.reps,
        "dtype": "float32",
        "tolerance_rel_rms": TOL,
        "baseline": None if base is None else {"rev": args.baseline, "commit": base.commit},
        "results": bench.rows,
        "ratios": bench.ratios,
    }
    write_record("pytorch-paths", device_name, args.dry_run, record, args.out)
    if bench.failed:
        print(f"error: failed their correctness check (not timed): {', '.join(bench.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
