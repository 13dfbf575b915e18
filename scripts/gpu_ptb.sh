#!/usr/bin/env bash
# The PTB language models (PAPER.md §3.3, Tables 4 and 9) on any GPU machine: check, bench, sweep, report.
#
#   1. check-graph: a few CUDA-graph training steps against eager steps from the same init (on failure: --mode eager);
#   2. bench: single-process training tokens/s of each configuration (base, LN*, DN* LSTM);
#   3. sweep: CONFIGS x SEEDS, JOBS concurrent processes on the one GPU, each run in OUT/sweep/<config>-s<seed>
#      (record.json, curves.csv, checkpoint); rerunning the script resumes unfinished runs and keeps finished ones;
#   4. report: perplexities beside Table 9, seconds per epoch, the perplexity curves (OUT/report).
#
# Run from the repository root:  bash scripts/gpu_ptb.sh      (everything lands in $OUT)
# Knobs (environment): OUT (runs/gpu_ptb), CONFIGS ("base-lstm ln-star-lstm dn-star-lstm"; "all": Table 9,
# "lstm": its LSTM column), SEEDS (0), JOBS (3), SOURCE (paper|code: the side of PAPER.md §5.4), EPOCHS (empty: 13),
# STEPS (empty: all epochs), MAX_TOKENS, VOCAB (a subset, for a rehearsal; the bench too), DEVICE (cuda), TIME_LIMIT
# (s per run, empty: none), BENCH_STEPS (20: timed steps per configuration), PY (python3). NB: the paper's text
# gives the baseline LSTM lr 0.1, the code (and most likely Table 4's 115.7) 1.0: run base-lstm with SOURCE=code for
# the latter.
# A tiny CPU rehearsal:
#     OUT=/tmp/p DEVICE=cpu STEPS=6 MAX_TOKENS=3000 VOCAB=200 EXTRA="--hidden-size 16 --batch-size 4 --eval-every 2" \
#         CONFIGS="base-lstm dn-star-lstm" JOBS=2 BENCH_STEPS=2 bash scripts/gpu_ptb.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_ptb}
PY=${PY:-python3}
CONFIGS=${CONFIGS:-base-lstm ln-star-lstm dn-star-lstm}
DEVICE=${DEVICE:-cuda}
. scripts/gpu_common.sh   # PYTHONPATH, unbuffered output, $OUT/log.txt (a copy of all output), $OUT/nvidia-smi.txt

DATA=(--device "$DEVICE")
[ -n "${MAX_TOKENS:-}" ] && DATA+=(--max-tokens "$MAX_TOKENS")
[ -n "${VOCAB:-}" ] && DATA+=(--vocab "$VOCAB")

MODE=auto
$PY -m dnlib ptb check-graph $CONFIGS --source "${SOURCE:-paper}" --steps 3 "${DATA[@]}" --json "$OUT/graph_check.json" \
  || { MODE=eager; echo "graph check failed: the runs train eagerly"; }
$PY -m dnlib ptb bench --steps "${BENCH_STEPS:-20}" "${DATA[@]}" --json "$OUT/bench.json" || echo "bench failed"

RUN=("${DATA[@]}" --source "${SOURCE:-paper}" --mode "$MODE")
[ -n "${EPOCHS:-}" ] && RUN+=(--epochs "$EPOCHS")
[ -n "${STEPS:-}" ] && RUN+=(--steps "$STEPS")
SWEEP=(--seeds ${SEEDS:-0} --jobs "${JOBS:-3}" --out "$OUT/sweep")
[ -n "${TIME_LIMIT:-}" ] && SWEEP+=(--time-limit "$TIME_LIMIT")
# shellcheck disable=SC2086  # EXTRA: more run flags, split on spaces
$PY -m dnlib ptb sweep $CONFIGS "${SWEEP[@]}" "${RUN[@]}" ${EXTRA:-}
rc=$?
$PY -m dnlib ptb report "$OUT/sweep" --out "$OUT/report" > "$OUT/report.json" && cat "$OUT/report/table.md"
exit $rc
