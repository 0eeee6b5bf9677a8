#!/usr/bin/env bash
# Every GPU figure of issue 5 in one run (about 4 minutes on one H100/H200):
#   1. the seed's recipe against vqtool ema-kaiming at batch 32 (target: vqtool >= 6,000 img/s),
#      then vqtool's images/s at batch 32 to 4096, eager, and at 32 compiled;
#   2. `vqtool train --profile fast` to test NMSE <= 0.056 (target: within 8 s of training),
#      its figures read back from the run's metrics.jsonl;
#   3. the gpu tests (bf16 with an fp32 quantizer, no host syncs per step).
#
#   PYTHONPATH=. bash benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]
#
# DATA_DIR holds cifar-10-batches-py/ (e.g. made beforehand with
# `python3 make_cifar10_python.py --folder DATA_DIR --source cifar10-jpeg.tar.gz`).
# OUT_DIR (default $OUT, else ./gpu-check) receives the logs, JSON figures and the fast run's
# metrics.jsonl. A dry run on the CPU: VQTOOL_CHECK_TINY=1 (a few steps of everything).
set -uo pipefail

DATA=${1:?usage: gpu_check.sh DATA_DIR [OUT_DIR]}
OUTDIR=${2:-${OUT:-gpu-check}}
PY=${PYTHON:-python}
export PYTHONPATH=${PYTHONPATH:-.}
mkdir -p "$OUTDIR"

if [[ ! -d "$DATA/cifar-10-batches-py" ]]; then
    echo "error: $DATA/cifar-10-batches-py not found (prepare it with make_cifar10_python.py --folder)" >&2
    exit 2
fi

if [[ -n "${VQTOOL_CHECK_TINY:-}" ]]; then
    # Known to run, not to measure: tiny step counts, CPU allowed.
    BENCH_STEPS=4; ROUNDS=1; SIZES=32,64; COMPILED_SIZES=32
    FAST_SET=(--set train.steps=8 --set train.log_every=4 --set train.eval_every=4
              --set train.warmup_steps=2 --set train.compile=false --set data.batch_size=64)
    TESTS=(tests/test_speed.py)
else
    BENCH_STEPS=300; ROUNDS=1; SIZES=32,256,512,1024,4096; COMPILED_SIZES=32
    FAST_SET=()
    # The fast run above already trains compiled on CUDA; skip the compile test's second compile.
    TESTS=(-m gpu -k "not compile" tests/test_speed.py)
fi

status=0
step() { echo; echo "== $*"; }

step "device"
$PY - <<'EOF' | tee "$OUTDIR/device.txt"
import os, torch
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| cpus", os.cpu_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu:", p.name, f"{p.total_memory / 2**30:.0f} GiB")
else:
    print("gpu: none (CPU dry run)")
EOF

step "1. images/s: seed recipe vs vqtool (batch 32), then by batch size, eager"
$PY benchmarks/bench_train.py --data-dir "$DATA" --steps "$BENCH_STEPS" --rounds "$ROUNDS" \
    --batch-sizes "$SIZES" --no-ttq --json "$OUTDIR/bench-eager.json" || status=1

step "1b. images/s compiled (train.compile=true; start-up includes compilation)"
$PY benchmarks/bench_train.py --data-dir "$DATA" --steps "$BENCH_STEPS" --no-seed \
    --batch-sizes "$COMPILED_SIZES" --compile --no-ttq --json "$OUTDIR/bench-compiled.json" \
    || status=1

step "2. vqtool train --profile fast (time to test NMSE <= 0.056)"
rm -rf "$OUTDIR/fast"
start=$(date +%s)
$PY -m vqtool train --profile fast --data-dir "$DATA" --run-dir "$OUTDIR/fast" ${FAST_SET[@]+"${FAST_SET[@]}"} \
    2>&1 | tee "$OUTDIR/fast.log" | grep -v "^step " || true
echo "wall time of the whole command: $(( $(date +%s) - start )) s"
if [[ -f "$OUTDIR/fast/metrics.jsonl" ]]; then
    $PY benchmarks/bench_train.py --summarize "$OUTDIR/fast/metrics.jsonl" \
        --json "$OUTDIR/fast-summary.json" || status=1
else
    echo "no metrics.jsonl: the fast run failed (see $OUTDIR/fast.log)"; status=1
fi

step "3. gpu tests"
$PY -m pytest -q -p no:cacheprovider "${TESTS[@]}" 2>&1 | tail -15 || status=1

echo
echo "figures and logs in $OUTDIR (exit status $status)"
exit $status
