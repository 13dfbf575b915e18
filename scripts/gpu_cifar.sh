#!/usr/bin/env bash
# The CIFAR experiments (PAPER.md §3.1, Tables 3 and 7) on any GPU machine: check, bench, sweep, report.
#
#   1. check-graph: a few CUDA-graph steps against eager steps from the same init (on failure: eager mode);
#   2. bench: single-process training images/s of BENCH_CONFIGS (with IMPL=compile: torch.compile'd normalizers);
#      then scripts/gpu_throughput.py (THROUGHPUT=1): Triton kernel == general path on the device, the DN layer vs
#      cuDNN BN, images/s of Baseline/BN*/DN* as K = 1, 3, 4, 8 stacked seeds, the Table 7 x 3 seeds estimate
#      (OUT/throughput/throughput.{json,md}; copy them to results/<card-slug>/);
#   3. sweep: CONFIGS x SEEDS, JOBS concurrent processes on the one GPU, each run in OUT/sweep/<dataset>-<config>-s<seed>
#      (record.json, curves.csv, checkpoint); rerunning the script resumes unfinished runs and keeps finished ones;
#   4. report: accuracies beside the paper's, images/s, the concurrency gain, the estimated time of Table 7.
#
# Run from the repository root:  bash scripts/gpu_cifar.sh      (everything lands in $OUT)
# Knobs (environment): OUT (runs/gpu_cifar), CONFIGS ("base bn bn-star dn-star"; "all" = Table 7), SEEDS (0),
# JOBS (4), DATASET (cifar10), STEPS (empty: the paper's schedule), SUBSET, EVAL_EVERY (1000), DEVICE (cuda),
# TIME_LIMIT (s per run, empty: none), BENCH_STEPS (300), BENCH_WARMUP (20), BENCH_CONFIGS (all), IMPL (auto|compile),
# PY (python3), THROUGHPUT (1; 0 skips scripts/gpu_throughput.py, which runs --tiny when DEVICE=cpu).
# A tiny CPU rehearsal:
#     OUT=/tmp/g DEVICE=cpu STEPS=6 SUBSET=300,100 EVAL_EVERY=2 BENCH_STEPS=2 BENCH_WARMUP=1 \
#         BENCH_CONFIGS="base dn-star" CONFIGS="base dn-star" JOBS=2 bash scripts/gpu_cifar.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_cifar}
PY=${PY:-python3}
CONFIGS=${CONFIGS:-base bn bn-star dn-star}
DATASET=${DATASET:-cifar10}
DEVICE=${DEVICE:-cuda}
IMPL=${IMPL:-auto}
. scripts/gpu_common.sh   # PYTHONPATH, unbuffered output, $OUT/log.txt (a copy of all output), $OUT/nvidia-smi.txt

DATA=(--dataset "$DATASET" --device "$DEVICE" --impl "$IMPL")
[ -n "${SUBSET:-}" ] && DATA+=(--subset "$SUBSET")

MODE=auto
$PY -m dnlib cifar check-graph $CONFIGS --steps 5 "${DATA[@]}" --json "$OUT/graph_check.json" \
  || { MODE=eager; echo "graph check failed: the runs use eager mode"; }
BENCH_JSON=bench.json; [ "$IMPL" = compile ] && BENCH_JSON=bench_compile.json
$PY -m dnlib cifar bench ${BENCH_CONFIGS:-all} --steps "${BENCH_STEPS:-300}" --warmup "${BENCH_WARMUP:-20}" --mode "$MODE" "${DATA[@]}" \
  --json "$OUT/$BENCH_JSON" || echo "bench failed"
if [ "${THROUGHPUT:-1}" = 1 ]; then
  TP=(--device "$DEVICE" --out "$OUT/throughput"); [ "$DEVICE" = cpu ] && TP+=(--tiny)
  $PY scripts/gpu_throughput.py "${TP[@]}" || echo "throughput: a check or a measurement failed (see $OUT/throughput)"
fi

RUN=(--mode "$MODE" --eval-every "${EVAL_EVERY:-1000}" "${DATA[@]}")
[ -n "${STEPS:-}" ] && RUN+=(--steps "$STEPS")
[ -n "${TIME_LIMIT:-}" ] && RUN+=(--time-limit "$TIME_LIMIT")
$PY -m dnlib cifar sweep $CONFIGS --seeds ${SEEDS:-0} --jobs "${JOBS:-4}" --out "$OUT/sweep" "${RUN[@]}" \
  || echo "sweep: some runs did not complete (rerun this script to resume them)"
$PY -m dnlib cifar report "$OUT" --dataset "$DATASET"
