#!/usr/bin/env bash
# Every GPU figure of issue 5 in one run (about 4 minutes on one H200):
#   1. the gpu tests (CUDA-graph steps against eager ones, no host syncs, bf16 with an fp32
#      quantizer, checkpoints that load on the CPU);
#   2. `vqtool train --profile fast` to test NMSE <= 0.056 (target: within 8 s of training),
#      as it stands and with a few alternative settings, each summarised from its metrics.jsonl;
#   3. the seed's recipe against vqtool ema-kaiming at batch 32 (target: vqtool >= 6,000 img/s),
#      CUDA graphs on and off, then vqtool's images/s at batch 32 to 4096.
#
#   PYTHONPATH=. bash benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]
#
# DATA_DIR holds cifar-10-batches-py/ (e.g. made beforehand with
# `python3 make_cifar10_python.py --folder DATA_DIR --source cifar10-jpeg.tar.gz`).
# OUT_DIR (default $OUT, else ./gpu-check) receives the logs, JSON figures and each run's
# metrics.jsonl (the runs themselves go to a temporary folder). A dry run on the CPU:
# VQTOOL_CHECK_TINY=1 (a few steps of everything).
set -uo pipefail

DATA=${1:?usage: gpu_check.sh DATA_DIR [OUT_DIR]}
OUTDIR=${2:-${OUT:-gpu-check}}
PY=${PYTHON:-python}
export PYTHONPATH=${PYTHONPATH:-.}
mkdir -p "$OUTDIR"
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT

if [[ ! -d "$DATA/cifar-10-batches-py" ]]; then
    echo "error: $DATA/cifar-10-batches-py not found (prepare it with make_cifar10_python.py --folder)" >&2
    exit 2
fi

# Time-to-quality runs: NAME and its --set overrides of the fast profile.
if [[ -n "${VQTOOL_CHECK_TINY:-}" ]]; then
    # Known to run, not to measure: tiny step counts, CPU allowed.
    BENCH_STEPS=4; SIZES=32,64; LIMIT=600
    TINY="train.steps=8,train.log_every=4,train.eval_every=4,train.warmup_steps=2,data.batch_size=64"
    VARIANTS=("fast:$TINY,train.compile=false" "b1024:$TINY,train.compile=false,train.learning_rate=2e-3")
    TESTS=(tests/test_speed.py)
    LATE_VARIANTS=()
else
    BENCH_STEPS=300; SIZES=32,256,1024,4096; LIMIT=60  # a fast run takes about 20 s
    # The fast profile as it is, then the alternatives it was chosen against (profiles/fast.toml).
    VARIANTS=(
        "fast:"
        "amsgrad:train.amsgrad=true"
        "b1024:data.batch_size=1024,train.learning_rate=2e-3,train.steps=2600"
        "kaiming:model.kaiming_init=true"
    )
    # Last, as compiling takes a while: torch.compile with the CUDA graph around it.
    LATE_VARIANTS=("compiled:train.compile=true")  # about 35 s
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

step "1. gpu tests"
timeout 90 $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}" 2>&1 | tail -25 || status=1

time_to_quality() {
for variant in "$@"; do
    name=${variant%%:*}
    sets=()
    IFS=, read -ra pairs <<< "${variant#*:}"
    for pair in ${pairs[@]+"${pairs[@]}"}; do sets+=(--set "$pair"); done
    echo; echo "-- $name: ${sets[*]-as it is}"
    start=$(date +%s%N)
    timeout "$LIMIT" $PY -m vqtool train --profile fast --data-dir "$DATA" \
        --run-dir "$RUNS/$name" ${sets[@]+"${sets[@]}"} > "$OUTDIR/ttq-$name.log" 2>&1 || status=1
    grep -v "^step " "$OUTDIR/ttq-$name.log" | tail -8
    echo "wall time of the whole command: $(( ($(date +%s%N) - start) / 1000000 )) ms"
    if [[ -f "$RUNS/$name/metrics.jsonl" ]]; then
        cp "$RUNS/$name/metrics.jsonl" "$OUTDIR/ttq-$name.metrics.jsonl"
        $PY benchmarks/bench_train.py --summarize "$RUNS/$name/metrics.jsonl" \
            --json "$OUTDIR/ttq-$name.json" || status=1
    else
        echo "no metrics.jsonl: the run failed (see ttq-$name.log)"; status=1
    fi
done
}

step "2. vqtool train --profile fast: time to test NMSE <= 0.056"
time_to_quality "${VARIANTS[@]}"

step "3. images/s: seed recipe vs vqtool (batch 32, CUDA graphs on and off), then by batch size"
timeout 150 $PY benchmarks/bench_train.py --data-dir "$DATA" --steps "$BENCH_STEPS" --rounds 1 \
    --batch-sizes "$SIZES" --variant eager=train.cuda_graphs=false --no-ttq \
    --json "$OUTDIR/bench.json" || status=1

if (( ${#LATE_VARIANTS[@]} )); then
    step "4. the fast profile compiled (torch.compile inside the CUDA graph)"
    time_to_quality "${LATE_VARIANTS[@]}"
fi

echo
echo "figures and logs in $OUTDIR (exit status $status)"
exit $status
