#!/usr/bin/env bash
# One call on a lent GPU machine (the `device` tool): set up, then run the named stages.
#
#   bash tools/gpu_session.sh tests bench_mlstm          # stages run in the order given
#
# Stages: env, tests, bench_mlstm, bench_slstm, bench_decode, bench_generate, bench_train.
# Logs and JSON records go to $OUT (the folder the device tool brings back), else runs/gpu/.
# Peer packages travel as wheels in .whl/ (copied from ../shared/gpu-wheels, ignored by git,
# named in the call's `carry`); the project itself is put on PYTHONPATH, with kernels/
# importable as xlstm_lm_kernels, so nothing is installed into the machine's Python.
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
fi
mkdir -p /tmp/pp && ln -sfn "$PWD/kernels" /tmp/pp/xlstm_lm_kernels
export PYTHONPATH="$PWD:/tmp/pp:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"

stage_env() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 - <<'EOF'
import torch, triton, transformers
print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)
print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
import xlstm_lm, xlstm_lm_kernels
for name in ("mlstm_kernels", "xlstm", "fla", "deepspeed", "datasets"):
    try:
        m = __import__(name); print(name, getattr(m, "__version__", "?"))
    except Exception as e:
        print(name, "NOT importable:", type(e).__name__, e)
EOF
}

stage_tests() {
    timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -n "${TEST_WORKERS:-8}" -p no:cacheprovider -rfEs \
        --junitxml="$OUT/junit-kernels.xml" tests/kernels tests/models/test_lm_triton.py \
        > "$OUT/pytest-kernels.log" 2>&1
    echo "pytest rc=$?"; tail -n 40 "$OUT/pytest-kernels.log"
}

bench() {  # bench NAME TIMEOUT ARGS...
    local name=$1 t=$2; shift 2
    timeout "$t" python3 "$@" --out "$OUT" > "$OUT/$name.log" 2>&1
    echo "$name rc=$?"; tail -n 60 "$OUT/$name.log"
}

stage_bench_mlstm() { bench bench-mlstm "${BENCH_TIMEOUT:-400}" tools/bench_kernels.py --ops mlstm ${MLSTM_ARGS:-}; }
stage_bench_slstm() { bench bench-slstm "${BENCH_TIMEOUT:-400}" tools/bench_kernels.py --ops slstm; }
stage_bench_decode() { bench bench-decode "${BENCH_TIMEOUT:-400}" tools/bench_kernels.py --ops decode; }
stage_bench_generate() { bench bench-generate "${BENCH_TIMEOUT:-400}" tools/bench_generate.py ${GEN_ARGS:-}; }
stage_bench_train() { bench bench-train "${BENCH_TIMEOUT:-400}" tools/bench_train.py ${TRAIN_ARGS:-}; }

for s in "$@"; do
    echo "===== stage $s ($(date +%T))"
    "stage_$s"
done
echo "===== done ($(date +%T))"
