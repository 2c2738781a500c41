"""Side-by-side kernel benchmarks: our Triton kernels against the published peers.

    python tools/bench_kernels.py                  # on a GPU: the protocol of ../shared/BENCHMARKS.md
    python tools/bench_kernels.py --dry-run        # anywhere: tiny shapes, Triton interpreter on CPU
    python tools/bench_kernels.py --ops mlstm --shapes 8x8192

For every shape it first checks the timed implementations against the float32
PyTorch reference on the same inputs (relative RMS error), then times forward and
forward+backward (``triton.testing.do_bench`` on CUDA: median of events after
warm-up; a perf_counter loop on CPU), records peak memory, and prints a table of
median times, ratios to the peer and achieved TFLOP/s and GB/s. A JSON record
(device, versions, commit, shapes, dtype, median/min/max, ratios) is written to
``benchmarks/results/kernels-<device>-<date>.json`` (dry runs: ``runs/bench-dry-run/``).

Peers: ``mlstm_kernels`` TFLA (``chunkwise--triton_xl_chunk``,
``chunkwise--triton_limit_chunk``, its ``triton`` step kernel), torch SDPA flash
attention (causal, 32 heads x 128), fla ``chunk_simple_gla`` where it imports, the
``xlstm`` sLSTM (``backend="cuda"`` where it builds) and the eager PyTorch loops.
A peer that cannot run here is listed with the reason instead of a time.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, CPU + Triton interpreter; checks the script end to end")
    ap.add_argument("--ops", default="mlstm,slstm,decode", help="comma list of mlstm, slstm, decode")
    ap.add_argument("--shapes", default=None, help="mLSTM (B x T) list, e.g. 8x8192,1x65536 (default: the protocol's)")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"], help="default bf16 (fp32 in dry runs)")
    ap.add_argument("--out", default=None, help="folder for the JSON record")
    ap.add_argument("--no-backward", action="store_true", help="time forward passes only")
    return ap.parse_args(argv)


ARGS = parse_args()
if ARGS.dry_run:
    # Must be set before triton is imported anywhere.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, str(ROOT))

from bench_record import write_record  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() and not ARGS.dry_run else "cpu")


# ----------------------------------------------------------------------------- timing


def bench(fn, reps: int) -> dict:
    """Median/min/max milliseconds of ``fn()`` (do_bench on CUDA, a loop on CPU)."""
    if DEVICE.type == "cuda":
        import triton.testing

        times = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="all")
    else:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "n": len(times)}


def peak_memory(fn) -> float | None:
    if DEVICE.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run_case(name: str, impls: dict, make_inputs, reference, flops: float, nbytes: float, backward: bool, reps: int, tol: float):
    """Check every implementation against ``reference`` then time fwd and fwd+bwd."""
    rows = []
    inputs = make_inputs()
    with torch.no_grad():
        ref_out = reference(*inputs)
    for impl, fn in impls.items():
        row = {"case": name, "impl": impl}
        if isinstance(fn, str):
            row["skipped"] = fn
            rows.append(row)
            continue
        try:
            with torch.no_grad():
                out = fn(*inputs)
            row["rel_err_vs_reference"] = rel_err(out, ref_out)
            row["correct"] = bool(math.isfinite(row["rel_err_vs_reference"]) and row["rel_err_vs_reference"] < tol)
            if not row["correct"]:
                row["skipped"] = f"output differs from the reference (rel err {row['rel_err_vs_reference']:.2e} > {tol})"
                rows.append(row)
                continue
            # fresh random inputs for the timed runs, never zeros
            timed = make_inputs()
            with torch.no_grad():
                row["fwd"] = bench(lambda: fn(*timed), reps)
                row["fwd_peak_mb"] = peak_memory(lambda: fn(*timed))
            if backward:
                leaves = [x.detach().requires_grad_(x.is_floating_point()) for x in timed]

                def fwbw():
                    out = fn(*leaves)
                    out.float().sum().backward()
                    for x in leaves:
                        x.grad = None

                row["fwdbwd"] = bench(fwbw, reps)
                row["fwdbwd_peak_mb"] = peak_memory(fwbw)
            med = row["fwd"]["median_ms"] / 1e3
            row["fwd_tflops"] = flops / med / 1e12
            row["fwd_gbps"] = nbytes / med / 1e9
        except Exception as e:  # a peer that fails must not hide the others
            row["skipped"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            if os.environ.get("BENCH_DEBUG"):
                traceback.print_exc()
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- mLSTM


def mlstm_cases(dtype, backward, reps):
    from xlstm_lm_kernels.mlstm import mlstm_chunkwise_torch, mlstm_chunkwise_triton

    if ARGS.dry_run:
        shapes, H, dqk, dv, chunk = [(1, 64), (2, 100)], 2, 16, 32, 16
    else:
        default = "128x512,32x2048,8x8192,2x32768,1x65536"
        shapes = [tuple(int(x) for x in s.split("x")) for s in (ARGS.shapes or default).split(",")]
        H, dqk, dv, chunk = 16, 128, 256, 64
    peers = _mlstm_peers()
    rows = []
    for B, T in shapes:

        def make_inputs(B=B, T=T):
            g = torch.Generator(device=DEVICE).manual_seed(B * 100003 + T)
            q = torch.randn(B, H, T, dqk, device=DEVICE, generator=g).to(dtype)
            k = torch.randn(B, H, T, dqk, device=DEVICE, generator=g).to(dtype)
            v = torch.randn(B, H, T, dv, device=DEVICE, generator=g).to(dtype)
            i = torch.randn(B, H, T, device=DEVICE, generator=g).to(dtype)
            f = (3.0 + torch.randn(B, H, T, device=DEVICE, generator=g)).to(dtype)
            return q, k, v, i, f

        def reference(q, k, v, i, f):
            return mlstm_chunkwise_torch(q.float(), k.float(), v.float(), i.float(), f.float(), chunk_size=chunk)

        impls = {"ours: triton chunkwise": lambda q, k, v, i, f: mlstm_chunkwise_triton(q, k, v, i, f, chunk_size=chunk)}
        impls.update({name: peer(chunk) for name, peer in peers.items()})
        # per (B, H): state update + readout 4*T*dqk*dv, intra-chunk causal T*L*(dqk+dv)
        flops = B * H * (4 * T * dqk * dv + T * chunk * (dqk + dv))
        nbytes = B * H * T * (2 * dqk + 2 * dv + 2) * torch.finfo(dtype).bits / 8
        tol = 5e-2 if dtype != torch.float32 else 1e-3
        rows += run_case(f"mlstm B{B} T{T} H{H} dqk{dqk} dv{dv} {str(dtype)[6:]}", impls, make_inputs, reference, flops, nbytes, backward, reps, tol)
        if not ARGS.dry_run or DEVICE.type == "cuda":
            rows += _sdpa_case(B, T, dtype, backward, reps)
    return rows


def _mlstm_peers() -> dict:
    peers = {}
    try:
        from mlstm_kernels.torch import get_mlstm_kernel
    except Exception as e:  # noqa: BLE001
        return {"mlstm_kernels": lambda chunk, e=e: f"not importable: {e}"}
    names = ["chunkwise--triton_xl_chunk", "chunkwise--triton_limit_chunk"]
    if DEVICE.type != "cuda":
        names = ["chunkwise--native_autograd"]  # the TFLA Triton kernels need CUDA
    for name in names:

        def make(chunk, name=name):
            try:
                kern = get_mlstm_kernel(name)
            except Exception as e:  # noqa: BLE001
                return f"unavailable: {e}"
            cs = 128 if "xl_chunk" in name else chunk

            def run(q, k, v, i, f):
                T = q.shape[2]
                if T % cs:
                    raise ValueError(f"{name} needs T % {cs} == 0")
                return kern(q, k, v, i, f, chunk_size=cs)

            return run

        peers[f"TFLA {name}"] = make
    try:
        from fla.ops.simple_gla import chunk_simple_gla  # noqa: F401

        def fla_peer(chunk):
            from fla.ops.simple_gla import chunk_simple_gla

            def run(q, k, v, i, f):
                # simple GLA: scalar log-decay per head and token; a different model
                # (no input gate / normaliser), timed on the same shapes for reference
                g = torch.nn.functional.logsigmoid(f.float())
                o, _ = chunk_simple_gla(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), g.transpose(1, 2))
                return o.transpose(1, 2)

            return run

        peers["fla chunk_simple_gla (different model)"] = fla_peer
    except Exception as e:  # noqa: BLE001
        peers["fla chunk_simple_gla"] = lambda chunk, e=e: f"not importable: {type(e).__name__}"
    return peers


def _sdpa_case(B, T, dtype, backward, reps):
    H, D = 32, 128

    def make_inputs():
        return tuple(torch.randn(B, H, T, D, device=DEVICE, dtype=dtype) for _ in range(3))

    def sdpa(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    flops = 4 * B * H * T * T * D / 2
    nbytes = 4 * B * H * T * D * torch.finfo(dtype).bits / 8
    return run_case(f"attention B{B} T{T} 32x128 {str(dtype)[6:]}", {"torch SDPA causal": sdpa}, make_inputs, sdpa, flops, nbytes, backward, reps, 1e-6)


# ----------------------------------------------------------------------------- sLSTM


def slstm_cases(dtype, backward, reps):
    from xlstm_lm_kernels.slstm import slstm_recurrent

    try:
        from xlstm_lm_kernels.slstm import slstm_triton
    except Exception as e:  # noqa: BLE001
        slstm_triton = None
        missing = f"not available: {e}"
    if ARGS.dry_run:
        cases = [("tiny", 2, 16, 2, 8)]
    else:
        cases = [(name, 16, T, 4, d // 4) for name, d in (("125M", 768), ("350M", 1024)) for T in (512, 2048, 8192)]
    rows = []
    for name, B, T, H, Dh in cases:

        def make_inputs(B=B, T=T, H=H, Dh=Dh):
            g = torch.Generator(device=DEVICE).manual_seed(T * 7 + Dh)
            wx = torch.randn(B, T, 4, H, Dh, device=DEVICE, generator=g).to(dtype)
            R = (0.1 * torch.randn(H, Dh, 4, Dh, device=DEVICE, generator=g)).to(dtype)
            b = torch.randn(H, 4, Dh, device=DEVICE, generator=g).to(dtype)
            return wx, R, b

        def reference(wx, R, b):
            return slstm_recurrent(wx.float(), R.float(), b.float())[0]

        impls = {
            "ours: triton fused": (lambda wx, R, b: slstm_triton(wx, R, b)[0]) if slstm_triton else missing,
            "eager PyTorch loop (ours)": lambda wx, R, b: slstm_recurrent(wx, R, b)[0],
            "xlstm sLSTM cuda": _xlstm_slstm_peer(B, H, Dh, dtype),
        }
        flops = B * T * H * (2 * Dh * 4 * Dh + 30 * Dh)
        nbytes = B * T * H * Dh * 5 * torch.finfo(dtype).bits / 8
        tol = 5e-2 if dtype != torch.float32 else 1e-3
        rows += run_case(f"slstm {name} B{B} T{T} H{H} Dh{Dh} {str(dtype)[6:]}", impls, make_inputs, reference, flops, nbytes, backward, reps, tol)
    return rows


def _xlstm_slstm_peer(B, H, Dh, dtype):
    if DEVICE.type != "cuda":
        return "needs CUDA (the official kernel is a CUDA extension)"
    try:
        from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

        dname = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}[dtype]
        cell = sLSTMCell(sLSTMCellConfig(hidden_size=H * Dh, num_heads=H, backend="cuda", batch_size=B, dtype=dname)).to(DEVICE)
    except Exception as e:  # noqa: BLE001
        return f"did not build: {type(e).__name__}: {str(e).splitlines()[0][:120]}"

    def run(wx, R, b):
        # copy our weights into its layout so outputs are comparable
        with torch.no_grad():
            cell._recurrent_kernel_.copy_(cell._recurrent_kernel_ext2int(R.permute(0, 1, 2, 3)))
            cell._bias_.copy_(cell._bias_ext2int(b))
        Bb, T = wx.shape[:2]
        out, _ = cell(wx.reshape(Bb, T, -1))
        return out.permute(0, 2, 1, 3)  # (B, NH, T, Dh) -> (B, T, NH, Dh)

    return run


# ----------------------------------------------------------------------------- decode


def decode_cases(dtype, reps):
    from xlstm_lm_kernels.mlstm import MLSTMState, mlstm_step, mlstm_step_triton

    H, dqk, dv = (2, 16, 32) if ARGS.dry_run else (16, 128, 256)
    batches = (1, 4) if ARGS.dry_run else (1, 16, 64)
    rows = []
    for B in batches:

        def make_inputs(B=B):
            q, k = (torch.randn(B, H, dqk, device=DEVICE, dtype=dtype) for _ in range(2))
            v = torch.randn(B, H, dv, device=DEVICE, dtype=dtype)
            i, f = torch.randn(B, H, device=DEVICE, dtype=dtype), 3 + torch.randn(B, H, device=DEVICE, dtype=dtype)
            C = torch.randn(B, H, dqk, dv, device=DEVICE)
            n = torch.randn(B, H, dqk, device=DEVICE)
            m = torch.randn(B, H, device=DEVICE)
            return q, k, v, i, f, C, n, m

        def eager(q, k, v, i, f, C, n, m):
            return mlstm_step(q.float(), k.float(), v.float(), i.float(), f.float(), MLSTMState(C, n, m))[0]

        impls = {
            "ours: triton step": lambda q, k, v, i, f, C, n, m: mlstm_step_triton(q, k, v, i, f, MLSTMState(C, n, m))[0],
            "eager PyTorch step": eager,
            "mlstm_kernels triton step": _tfla_step_peer(),
        }
        flops = B * H * 6 * dqk * dv
        nbytes = B * H * dqk * dv * 4 * 2
        rows += run_case(f"mlstm decode B{B} H{H} dqk{dqk} dv{dv}", impls, make_inputs, eager, flops, nbytes, False, reps, 5e-2)
    return rows


def _tfla_step_peer():
    if DEVICE.type != "cuda":
        return "needs CUDA"
    try:
        from mlstm_kernels.torch import get_mlstm_step_kernel

        kern = get_mlstm_step_kernel("triton")
    except Exception as e:  # noqa: BLE001
        return f"unavailable: {e}"

    def run(q, k, v, i, f, C, n, m):
        h, _ = kern(q=q, k=k, v=v, i=i[..., None], f=f[..., None], c=C.clone(), n=n.clone(), m=m[..., None].clone())
        return h

    return run


# ----------------------------------------------------------------------------- main


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("triton", "mlstm_kernels", "xlstm", "fla"):
        try:
            out[mod] = getattr(__import__(mod), "__version__", "installed")
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out




def print_table(rows) -> None:
    print(f"\n{'case':52s} {'impl':40s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'TFLOP/s':>8s} {'GB/s':>8s} {'ratio':>7s}  note")
    base = {}
    for r in rows:
        if r["impl"].startswith("ours") and "fwd" in r:
            base[r["case"]] = r
    for r in rows:
        if "fwd" not in r:
            print(f"{r['case']:52s} {r['impl']:40s} {'-':>9s} {'-':>11s} {'-':>8s} {'-':>8s} {'-':>7s}  {r.get('skipped', '')}")
            continue
        fb = r.get("fwdbwd", {}).get("median_ms")
        ours = base.get(r["case"])
        ratio = ours["fwd"]["median_ms"] / r["fwd"]["median_ms"] if ours else float("nan")
        r["ours_over_this_fwd"] = ratio
        if ours and fb and "fwdbwd" in ours:
            r["ours_over_this_fwdbwd"] = ours["fwdbwd"]["median_ms"] / fb
        fbs = f"{fb:11.3f}" if fb else f"{'-':>11s}"
        print(
            f"{r['case']:52s} {r['impl']:40s} {r['fwd']['median_ms']:9.3f} {fbs} "
            f"{r['fwd_tflops']:8.2f} {r['fwd_gbps']:8.1f} {ratio:7.2f}  err {r['rel_err_vs_reference']:.1e}"
        )
    print("ratio = our forward time / this implementation's forward time (< 1: ours is faster)")


def main() -> int:
    ops = set(ARGS.ops.split(","))
    unknown = ops - {"mlstm", "slstm", "decode"}
    if unknown:
        print(f"error: unknown ops {sorted(unknown)}; use mlstm, slstm, decode", file=sys.stderr)
        return 2
    dtype = getattr(torch, ARGS.dtype) if ARGS.dtype else (torch.float32 if ARGS.dry_run else torch.bfloat16)
    reps = 2 if ARGS.dry_run else 20
    backward = not ARGS.no_backward
    rows = []
    if "mlstm" in ops:
        rows += mlstm_cases(dtype, backward, reps)
    if "slstm" in ops:
        rows += slstm_cases(dtype, backward, reps)
    if "decode" in ops:
        rows += decode_cases(dtype, reps)
    print_table(rows)
    device_name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"cpu-{platform.machine()}"
    record = {
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "versions": versions(),
        "dtype": str(dtype),
        "results": rows,
    }
    write_record("kernels", device_name, ARGS.dry_run, record, ARGS.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
