"""The long-time-lag benchmarks of Hochreiter & Schmidhuber (1997), plus parity and MQAR,
on any backbone: success rate over seeds, median training sequences to success, final
test error, as a markdown table and a heat-map PNG.

    python eval/long_lag.py --quick --out docs/long_lag_quick.md --plot docs/long_lag_quick.png
    python eval/long_lag.py --full --seeds 10 --out full.md --plot full.png      # GPU-sized budgets
    python eval/long_lag.py --quick --tasks adding_T100 --models lstm,rnn --seeds 3

Tasks, criteria and deviations from the paper: xlstm_lm/evaluation/tasks.py;
model, optimiser and budgets: xlstm_lm/evaluation/long_lag.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from xlstm_lm.evaluation.long_lag import (  # noqa: E402
    MODELS,
    full_specs,
    plot_results,
    quick_specs,
    results_table,
    run_suite,
)


def _machine(device: str) -> str:
    """CPU model (and GPU name when running on CUDA), for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (models), {cpu} (data)"
    return f"CPU {cpu}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small CPU suite, ~10 minutes on 2 cores (default)")
    mode.add_argument("--full", action="store_true", help="the paper's lags and test sizes; needs a GPU-sized budget")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {','.join(MODELS)}")
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: all of the mode)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per task x model (quick: 2, full: 10)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (keep 1 on shared CPUs)")
    ap.add_argument("--device", default="cpu", help="torch device for the models, e.g. cuda (data are generated on the CPU)")
    ap.add_argument("--out", default=None, help="write the markdown report here")
    ap.add_argument("--plot", default=None, help="write the heat-map PNG here")
    ap.add_argument("--json", default=None, help="write every run's result (with history) here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device} but CUDA is not available; use --device cpu", file=sys.stderr)
        return 2
    full = args.full
    specs = full_specs() if full else quick_specs()
    if args.tasks:
        wanted = args.tasks.split(",")
        names = [s.task.name for s in specs]
        bad = [t for t in wanted if t not in names]
        if bad:
            print(f"error: unknown task(s) {bad}; this mode has {names}", file=sys.stderr)
            return 2
        specs = [s for s in specs if s.task.name in wanted]
    models = args.models.split(",")
    bad = [m for m in models if m not in MODELS]
    if bad:
        print(f"error: unknown model(s) {bad}; choose from {list(MODELS)}", file=sys.stderr)
        return 2
    seeds = list(range(args.seeds if args.seeds is not None else (10 if full else 2)))

    t0 = time.perf_counter()
    results = run_suite(specs, models, seeds, device=args.device)
    wall = time.perf_counter() - t0
    table = results_table(results)
    print(table)
    print(f"wall time {wall:.0f} s")

    if args.out:
        cmd = "python eval/long_lag.py " + " ".join(sys.argv[1:] if argv is None else argv)
        budgets = "\n".join(
            f"| {s.task.name} | {s.run.budget:,} | {s.run.batch_size} | {s.run.lr:g} | {s.run.eval_every:,} | "
            f"{s.task.test_size:,} | {s.task.success_fraction:.4g} per {s.task.unit} |"
            for s in specs
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            f"# Long-time-lag suite ({'full' if full else 'quick'} mode)\n\n"
            f"- command: `{cmd}`\n"
            f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; wall time {wall:.0f} s\n"
            f"- machine: {_machine(args.device)}, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)\n"
            f"- seeds: {seeds}; width d_model={specs[0].run.d_model}, {specs[0].run.num_blocks} block\n\n"
            "Cell: `solved/runs · median training sequences to success · median final test error rate`.\n\n"
            f"{table}\n\n"
            "Budgets (training sequences per run; Adam, grad-norm clip 1.0):\n\n"
            "| task | budget | batch | lr | eval every | test seqs | success needs |\n"
            "|---|---|---|---|---|---|---|\n"
            f"{budgets}\n"
        )
    if args.plot:
        plot_results(results, args.plot, f"long-lag suite, {'full' if full else 'quick'} mode, {len(seeds)} seeds")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
