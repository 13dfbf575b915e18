#!/usr/bin/env bash
# Notebook 08's `full` size: every analysis point of dnlib.experiments.analysis on the whole of CIFAR-10 with the paper's
# CNN widths (32, 32, 64), 30 epochs per training point, 3 seeds; for a GPU (hours). One process per run through
# the runner's sweep (resumable: a rerun skips finished runs); several runs share the GPU.
#   scripts/analysis_full.sh [OUT] [JOBS]     # default runs/analysis/full, 4 runs at a time
#   python -m dnlib analysis report OUT --figures OUT/figures      # then the tables and figures
set -euo pipefail
OUT=${1:-runs/analysis/full}
JOBS=${2:-4}
PY=${PYTHON:-python}
for group in batch smooth lr depth inv; do
  "$PY" -m dnlib analysis sweep "$group" --seeds 0 1 2 --jobs "$JOBS" --out "$OUT" --size full --device auto
done
"$PY" -m dnlib analysis report "$OUT" --figures "$OUT/figures" > "$OUT/report.json"
