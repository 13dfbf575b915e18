#!/usr/bin/env bash
# Super-resolution (PAPER.md §3.4, Tables 5 and 6) on any GPU machine: bench, sweep, report.
#
#   1. bench: single-process training steps/s of each model;
#   2. sweep: SCHEDULE-<model> for each of MODELS x SEEDS, JOBS concurrent processes on the one GPU, each run in
#      OUT/sweep/<schedule>-<model>-s<seed> (record.json, curves.csv, checkpoint); rerunning the script resumes
#      unfinished runs and keeps finished ones;
#   3. report: Bicubic and every run on SETS (PSNR/SSIM on Y, the paper's 8-px border) beside Tables 5 (Set14)
#      and 6 (BSD200) in OUT/sweep/sr_results.json.
#
# Run from the repository root:  bash scripts/gpu_sr.sh      (everything lands in $OUT)
# Data: T91 and the test sets under $DNLIB_DATA (data/README.md); absent test sets are reported as missing.
# Knobs (environment): OUT (runs/gpu_sr), MODELS ("none bn dn* dn*-code"), SCHEDULE (fast: Adam, not the paper's
# SGD; paper; smoke), SEEDS (0), JOBS (4), SCALE (3), STEPS (empty: the schedule's; fewer to fit a time budget, the
# milestones follow), EVAL_EVERY (2000), SETS ("Set5 Set14 BSD200"), DEVICE (cuda), TIME_LIMIT (s per run, empty:
# none; a run stops at the first chunk boundary where the next chunk would not fit), BENCH_STEPS (200), PY (python3).
# A tiny CPU rehearsal:
#     OUT=/tmp/gsr DEVICE=cpu SCHEDULE=smoke STEPS=6 EVAL_EVERY=2 BENCH_STEPS=2 SETS=Set5 JOBS=2 MODELS="none dn*" \
#         bash scripts/gpu_sr.sh
set -u
set -f   # MODELS holds "dn*": no globbing
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_sr}
PY=${PY:-python3}
SCHEDULE=${SCHEDULE:-fast}
DEVICE=${DEVICE:-cuda}
. scripts/gpu_common.sh   # PYTHONPATH, unbuffered output, $OUT/log.txt (a copy of all output), $OUT/nvidia-smi.txt

CONFIGS=()
for m in ${MODELS:-none bn dn* dn*-code}; do CONFIGS+=("$SCHEDULE-$m"); done
$PY -m dnlib sr bench "${CONFIGS[@]}" --steps "${BENCH_STEPS:-200}" --device "$DEVICE" --json "$OUT/bench.json" \
  || echo "bench failed"

RUN=(--device "$DEVICE" --scale "${SCALE:-3}" --eval-every "${EVAL_EVERY:-2000}")
[ -n "${STEPS:-}" ] && RUN+=(--steps "$STEPS")
[ -n "${TIME_LIMIT:-}" ] && RUN+=(--time-limit "$TIME_LIMIT")
$PY -m dnlib sr sweep "${CONFIGS[@]}" --seeds ${SEEDS:-0} --jobs "${JOBS:-4}" --out "$OUT/sweep" "${RUN[@]}" \
  --sets ${SETS:-Set5 Set14 BSD200} || echo "sweep: some runs did not complete (rerun this script to resume them)"
$PY -m dnlib sr report "$OUT/sweep" --sets ${SETS:-Set5 Set14 BSD200}
