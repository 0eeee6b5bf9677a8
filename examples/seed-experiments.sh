#!/usr/bin/env bash
# The seed's three published experiments at their full 25,000 steps, with vqtool's profiles:
# train, evaluate on the test split every 5,000 steps and at the end, plot each run and
# compare the three.
#
#   examples/seed-experiments.sh [DATA_DIR] [OUT_DIR] [--set KEY=VALUE ...]
#
# DATA_DIR holds cifar-10-batches-py/ (default ./data; `vqtool download` fetches it), OUT_DIR
# receives one run folder per profile (default ./seed-experiments). Extra --set options go to
# every training, e.g. `--set model.codebook_init=seed --set model.dead_code_steps=0` for the
# seed's own codebook behaviour. A run that already has a checkpoint is resumed, so the script
# can be stopped and started again. About 17 minutes a run on a 2-core CPU with native bf16,
# under a minute on one H100/H200.
set -euo pipefail

data_dir=${1:-data}
out_dir=${2:-seed-experiments}
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$out_dir"

for profile in original ema ema-kaiming; do
    run="$out_dir/$profile"
    resume=()
    [[ -f "$run/checkpoint.pt" ]] && resume=(--resume)
    vqtool train --profile "$profile" --data-dir "$data_dir" --run-dir "$run" \
        --set train.eval_every=5000 "${resume[@]}" "$@"
    vqtool evaluate "$run" --data-dir "$data_dir"
    vqtool plot "$run" --data-dir "$data_dir"
done

vqtool compare "$out_dir/original" "$out_dir/ema" "$out_dir/ema-kaiming" \
    -o "$out_dir/compare.png" --json "$out_dir/compare.json"

# Test NMSE at each evaluation (every 5,000 steps), the seed README's table, from metrics.jsonl.
python3 - "$out_dir" <<'PY'
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
table = {}
for profile in ("original", "ema", "ema-kaiming"):
    lines = (out / profile / "metrics.jsonl").read_text().splitlines()
    table[profile] = {r["step"]: r["nmse"] for r in map(json.loads, lines) if r["kind"] == "eval"}
steps = sorted({step for evals in table.values() for step in evals})
print("test NMSE at step " + "".join(f"{step:>9,}" for step in steps))
for profile, evals in table.items():
    print(f"{profile:<18}" + "".join(f"{evals.get(step, float('nan')):9.4f}" for step in steps))
PY
