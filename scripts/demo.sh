#!/usr/bin/env bash
# The main job on the embedded sample, end to end on CPU in a few minutes:
# build a validated release -> short CLIP and SLIP runs (same data order, steps, batch, lr) -> evaluate -> compare.
set -euo pipefail
OUT=${OUT:-out}
STEPS=${STEPS:-60}
BATCH=${BATCH:-64}
WARMUP=${WARMUP:-10}

REL=$(slip-etl build --category electronics --source sample --out "$OUT" | tail -n 1)
slip-etl validate "$REL"
slip-etl stats "$REL"

for method in clip slip; do
  run="$OUT/runs/$method"
  slip-train --release "$REL" --method "$method" --model slip-tiny --batch-size "$BATCH" --workers 1 \
    --steps "$STEPS" --warmup "$WARMUP" --seed 0 --out "$run"
  slip-eval "$run" --release "$REL" --split test --json "$run/eval-test.json"
done
slip-eval compare "$OUT/runs/clip" "$OUT/runs/slip" --out "$OUT/compare"
echo "release: $REL"
echo "comparison: $OUT/compare"
echo "what it shows: the pipeline end to end; one ${STEPS}-step run per method on the 3,000-product sample cannot"
echo "separate a method difference from seed noise (compare.md says so). Multi-seed SLIP-vs-CLIP figures and how to"
echo "run them: bench/README.md (bench/quality.py, bench/methods.py)."
