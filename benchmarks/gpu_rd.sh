#!/usr/bin/env bash
# The GPU figures of the compressed code files, in one run on one GPU:
#   1. `vqtool train --profile fast`, then the `prior` profile over its codes (stopped with
#      SIGTERM, which saves a checkpoint, if it is still training after PRIOR_LIMIT seconds);
#   2. beside the prior: `vqtool evaluate FAST --rate-distortion` over the first 2,000 test
#      images (the fast run's PSNR and each codec's bits per pixel there) and, with a VQ run
#      holding its code files in VQ_RUN/prior, small coding priors over those codes (each on
#      the GPU, one CPU thread apiece);
#   3. the first 2,000 test images coded with the prior: the whole file's bits per pixel (the
#      prior's point beside the codecs'), and its codes read back equal to the raw file's.
#
#   PYTHONPATH=. bash benchmarks/gpu_rd.sh DATA_DIR [OUT_DIR] [VQ_RUN]
#
# DATA_DIR holds cifar-10-batches-py/. OUT_DIR (default $OUT, else ./gpu-rd) receives the logs
# and JSON figures. A dry run on the CPU: VQTOOL_CHECK_TINY=1 (a few steps of everything).
set -uo pipefail

DATA=${1:?usage: gpu_rd.sh DATA_DIR [OUT_DIR] [VQ_RUN]}
OUTDIR=${2:-${OUT:-gpu-rd}}
VQ_RUN=${3:-}
PY=${PYTHON:-python}
export PYTHONPATH=${PYTHONPATH:-.}
mkdir -p "$OUTDIR"
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT
vqtool() { $PY -m vqtool "$@"; }

if [[ -n "${VQTOOL_CHECK_TINY:-}" ]]; then
    FAST_SET=(--set train.steps=6 --set data.batch_size=64 --set train.eval_every=3
              --set train.cuda_graphs=false)
    PRIOR_SET=(--set train.steps=4 --set prior.layers=1 --set prior.width=32 --set train.eval_every=2)
    SWEEP_STEPS=4; RD_IMAGES=8; PRIOR_LIMIT=300
else
    FAST_SET=(); PRIOR_SET=(); SWEEP_STEPS=3000; RD_IMAGES=2000; PRIOR_LIMIT=330
fi
# Small coding priors over VQ_RUN's codes: NAME and its --set overrides of prior-cpu.
SWEEP=(
    "l2w128m4:prior.layers=2,prior.width=128,prior.mlp_ratio=4"
    "l2w128m2:prior.layers=2,prior.width=128,prior.mlp_ratio=2"
    "l3w96m2:prior.layers=3,prior.width=96,prior.mlp_ratio=2"
    "l2w96m4:prior.layers=2,prior.width=96,prior.mlp_ratio=4"
    "l1w192m2:prior.layers=1,prior.width=192,prior.mlp_ratio=2"
    "l2w160m2:prior.layers=2,prior.width=160,prior.mlp_ratio=2"
    "l2w128m4x2:prior.layers=2,prior.width=128,prior.mlp_ratio=4,train.steps=$((2 * SWEEP_STEPS))"
)

status=0
step() { echo; echo "== $*"; }
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" \
    | tee "$OUTDIR/device.txt"

step "fast"
start=$SECONDS
vqtool train --profile fast --data-dir "$DATA" --run-dir "$RUNS/fast" "${FAST_SET[@]}" \
    >"$OUTDIR/fast.log" 2>&1 || { echo "fast failed"; tail -5 "$OUTDIR/fast.log"; exit 1; }
tail -3 "$OUTDIR/fast.log"; echo "fast: $((SECONDS - start)) s wall"

step "prior (background, at most $PRIOR_LIMIT s), rate-distortion sweep and coding priors beside it"
start=$SECONDS
timeout -s TERM "$PRIOR_LIMIT" $PY -m vqtool prior "$RUNS/fast" --profile prior --data-dir "$DATA" \
    "${PRIOR_SET[@]}" >"$OUTDIR/prior.log" 2>&1 &
prior_pid=$!
OMP_NUM_THREADS=4 $PY -m vqtool evaluate "$RUNS/fast" --split test --rate-distortion \
    --rd-images "$RD_IMAGES" --data-dir "$DATA" --json "$OUTDIR/fast-eval.json" \
    >"$OUTDIR/rd.log" 2>&1 &
rd_pid=$!
sweep_pids=()
if [[ -n "$VQ_RUN" ]]; then
    for variant in "${SWEEP[@]}"; do
        name=${variant%%:*}; sets=${variant#*:}
        args=(--set "train.steps=$SWEEP_STEPS" --set train.eval_every=0)
        IFS=, read -ra pairs <<<"$sets"
        for pair in "${pairs[@]}"; do args+=(--set "$pair"); done
        mkdir -p "$RUNS/sweep-$name" && cp "$VQ_RUN"/prior/codes-*.vqc "$RUNS/sweep-$name/"
        (OMP_NUM_THREADS=1 $PY -m vqtool prior "$VQ_RUN" --profile prior-cpu --run-dir "$RUNS/sweep-$name" \
            --data-dir "$DATA" "${args[@]}" >"$OUTDIR/sweep-$name.log" 2>&1 &&
         OMP_NUM_THREADS=1 $PY -m vqtool evaluate "$RUNS/sweep-$name" --json "$OUTDIR/sweep-$name.json" \
            >>"$OUTDIR/sweep-$name.log" 2>&1) &
        sweep_pids+=($!)
    done
fi
wait "$prior_pid"; echo "prior exit $? after $((SECONDS - start)) s"; tail -4 "$OUTDIR/prior.log"
vqtool evaluate "$RUNS/fast/prior" --json "$OUTDIR/prior-eval.json" >>"$OUTDIR/prior.log" 2>&1 || status=1
cat "$OUTDIR/prior-eval.json"

step "the first $RD_IMAGES test images coded with the prior, and back"
start=$SECONDS
vqtool encode "$RUNS/fast" "cifar10:test:$RD_IMAGES" -o "$RUNS/raw.vqc" --data-dir "$DATA" >/dev/null 2>&1 || status=1
vqtool encode "$RUNS/fast" "cifar10:test:$RD_IMAGES" -o "$RUNS/prior.vqc" --data-dir "$DATA" \
    --prior "$RUNS/fast/prior" >"$OUTDIR/code.log" 2>&1 || status=1
encoded=$((SECONDS - start))
same=$($PY - "$RUNS" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from vqtool.codes.vqc import read_codes
from vqtool.prior.load import load_prior
runs = Path(sys.argv[1])
prior = load_prior(runs / "fast" / "prior", "cpu")
raw, coded = read_codes(runs / "raw.vqc"), read_codes(runs / "prior.vqc", prior)
print("true" if np.array_equal(raw.codes, coded.codes) else "false")
EOF
) || same=false
[[ $same == true ]] || status=1
bytes=$(stat -c %s "$RUNS/prior.vqc" 2>/dev/null || echo 0)
echo "{\"images\": $RD_IMAGES, \"prior_file_bytes\": $bytes, \"bpp_file\": $($PY -c "print($bytes * 8 / ($RD_IMAGES * 1024))"), \"encode_s\": $encoded, \"codes_equal_raw\": $same}" \
    | tee "$OUTDIR/prior-file.json"

step "rate-distortion sweep and coding priors"
wait "$rd_pid" || status=1; tail -12 "$OUTDIR/rd.log"
cp "$RUNS/fast/rd-test.json" "$OUTDIR/" 2>/dev/null || status=1
for pid in "${sweep_pids[@]}"; do wait "$pid" || status=1; done
for f in "$OUTDIR"/sweep-*.json; do
    [[ -f $f ]] && $PY -c "import json,sys; d=json.load(open('$f')); print('$(basename "$f" .json)', round(d['bits_per_image'], 1), round(d['ratio_to_unigram'], 4))"
done
cp "$RUNS/fast/metrics.jsonl" "$OUTDIR/fast-metrics.jsonl"
exit $status
