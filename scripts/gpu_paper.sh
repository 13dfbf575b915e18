#!/usr/bin/env bash
# The whole paper in one device budget (issue 28): Tables 3/7 (CIFAR-10), 5/6 (SR) and 4/9 (PTB) x 3 seeds as
# stacked launches (dnlib.experiments.campaign), then 06_results on the records and the HTML report.
#
#   1. campaign: a short bench (seconds per step of the largest launch of each experiment), the plan (predicted
#      seconds per launch, launches at once that fit the card's memory), then every launch under the budget: a launch
#      that does not fit stops at a chunk boundary (or is built and not trained) and every copy records
#      `stopped: time budget at step N`; nothing is dropped. OUT/campaign.json (bench, plan, predicted vs actual),
#      OUT/tables.md (every table beside the paper's), a run folder per copy under OUT/<experiment>/<launch>/;
#   2. 06_results executed on OUT (mean ± std per row, n, the paper's number) and rendered to OUT/report/html.
# Rerunning the script resumes every unfinished launch from its checkpoint and skips finished ones.
#
# Run from the repository root:  bash scripts/gpu_paper.sh          (everything lands in $OUT)
# Knobs (environment): OUT (runs/gpu_paper), DEVICE (cuda), BUDGET (minutes for the whole script, default 9),
# REPORT_S (seconds kept for 06 and the report, default 60), JOBS (launches at once, at most; default 1), SEEDS
# ("0 1 2"), EXPERIMENTS ("cifar sr ptb"), TINY (1: the CPU rehearsal's sizes), PY (python3).
# The CPU rehearsal (tests/test_campaign.py):  OUT=/tmp/paper DEVICE=cpu TINY=1 bash scripts/gpu_paper.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_paper}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
. scripts/gpu_common.sh   # PYTHONPATH, unbuffered output, $OUT/log.txt (a copy of all output), $OUT/nvidia-smi.txt
START=$(date +%s)

SECONDS_FOR_RUNS=$($PY -c "print(max(30.0, float('${BUDGET:-9}') * 60 - float('${REPORT_S:-60}')))")
ARGS=(--out "$OUT" --device "$DEVICE" --budget "$SECONDS_FOR_RUNS" --jobs "${JOBS:-1}" --seeds ${SEEDS:-0 1 2}
      --experiments ${EXPERIMENTS:-cifar sr ptb})
[ "${TINY:-0}" = 1 ] && ARGS+=(--tiny)
$PY -m dnlib.experiments.campaign "${ARGS[@]}"
rc=$?

ABS_OUT=$(cd "$OUT" && pwd)
$PY -m dnlib.notebook.suite run 06_results --profile full -p results_dir "$ABS_OUT" --out "$OUT/report/suite" \
  --no-progress || { echo "06_results failed (see $OUT/report/suite)"; rc=1; }
$PY scripts/report.py --suite "$OUT/report/suite" --out "$OUT/report/html" || echo "report: rendering failed"
echo "gpu_paper: $(( $(date +%s) - START )) s in all; tables: $OUT/tables.md, report: $OUT/report/html/index.html"
exit $rc
