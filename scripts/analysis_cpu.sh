#!/usr/bin/env bash
# Notebook 08's `cpu` configuration: every analysis point of dnlib.experiments.analysis x 3 seeds on a 2-core CPU,
# in this process per seed group (`points`: resumable; a rerun skips finished points). Two processes, one thread
# each, niced (the machine may be shared); seed 0 first, so that a cut-short run still has whole analyses.
#   scripts/analysis_cpu.sh [OUT]          # default runs/analysis/cpu; then scripts/analysis_collect.sh
set -euo pipefail
OUT=${1:-runs/analysis/cpu}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=agg
run() { nice -n 10 "$PY" -m dnlib analysis points "$@" --size cpu --out "$OUT" --device cpu; }
mkdir -p "$OUT"
( run all --seeds 0 && run batch smooth --seeds 2 ) > "$OUT/log-a.txt" 2>&1 &
A=$!
( run all --seeds 1 && run lr depth inv --seeds 2 ) > "$OUT/log-b.txt" 2>&1 &
B=$!
wait $A; wait $B
