#!/usr/bin/env bash
# The GPU checks of issues 2 and 3 in one short run, for a session that is lent a GPU:
#   CUDA parity tests, pseudo-labelling at N = 32,621 on the GPU (target <= 3 s),
#   ResNet-50 256x128 UDA iteration speed with AMP on and off.
# Runs with the device machine's own python3 (torch, numba, scikit-learn, scipy are there):
#   bash benchmarks/gpu_check.sh            (results also under $OUT when set)
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
work="${OUT:-/tmp/gpu_check}"
mkdir -p "$work"
py=python3

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$py -m pytest -q -p no:cacheprovider tests/test_cluster.py tests/test_memory.py -k cuda \
    || echo "(pytest unavailable or failed)"
$py benchmarks/pseudo_labels.py --sizes 32621 --device cuda | tee "$work/pseudo_labels.txt"

$py -m trainer.cli synth "$work/src" --identities 300 --cameras 6 --style market --seed 0 --workers 0
$py -m trainer.cli synth "$work/tgt" --identities 300 --cameras 6 --style night --seed 1 --workers 0
for amp in amp no-amp; do
    $py -m trainer.cli train --source "$work/src" --target "$work/tgt" --out "$work/run-$amp" \
        --arch resnet50 --pretrained none --epochs 1 --iters 40 --eval-step 100 \
        --device cuda --workers 8 "--$amp" > /dev/null
    $py - "$work/run-$amp/metrics.jsonl" "$amp" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
speeds = [r["images_per_s"] for r in rows if r["event"] == "iteration"][1:]
batch = 128  # 64 source + 64 target images per iteration
median = statistics.median(speeds)
print(f"resnet50 256x128 UDA {sys.argv[2]}: {median:.0f} images/s, "
      f"{1000 * batch / median:.0f} ms per iteration (median of {len(speeds)} logged)")
PY
done | tee "$work/train_speed.txt"
