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
# REPORT_S (seconds kept for 06 and the report, default 60; 0: skip both, run them later where the records land),
# JOBS (launches at once, at most; default 1), SEEDS ("0 1 2"), EXPERIMENTS ("cifar sr ptb"), TINY (1: the CPU
# rehearsal's sizes), PY (python3), BUNDLE (a folder, not inside OUT, that receives the few files worth bringing
# back from a device call, at its top level: campaign.json, tables.md, nvidia-smi.txt, log.txt and runs.tgz, OUT
# without checkpoints and TensorBoard events; the device returns at most 8 files, 2 folders down).
# The campaign runs under a hard `timeout` of its budget plus 30 s, so 06 and the bundle still happen when it overruns;
# campaign.json is written after the bench and after every launch.
#
# On a GPU machine lent for one call (its working tree has no data and no notebook packages):
#   here:    EXPERIMENTS="sr ptb" bash scripts/gpu_stage.sh          (stages .device/: see that script)
#   device:  run(carry=[".device"], timeout_s=600, command=
#            'python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl;
#             export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH DNLIB_DATA=$PWD/.device/data;
#             python3 -m ipykernel install --user --name python3 >/dev/null 2>&1;
#             BUNDLE="$OUT" OUT=runs/gpu_paper REPORT_S=0 EXPERIMENTS="sr ptb" bash scripts/gpu_paper.sh')
#   (the device sets OUT to the folder that comes back: the campaign's own OUT must be another one)
#   CIFAR's JPEGs fill a call on their own (EXPERIMENTS=cifar bash scripts/gpu_stage.sh packs them into one file,
#   which this script unpacks into $DNLIB_DATA); give that call REPORT_S=0 and run 06 here on what comes back.
# The CPU rehearsal (tests/test_campaign.py):  OUT=/tmp/paper DEVICE=cpu TINY=1 bash scripts/gpu_paper.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_paper}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
BUNDLE=${BUNDLE:-}
if [ -n "$BUNDLE" ]; then
  mkdir -p "$BUNDLE" "$OUT"
  case "$(cd "$BUNDLE" && pwd)/" in "$(cd "$OUT" && pwd)/"*)
    echo "gpu_paper.sh: BUNDLE=$BUNDLE is inside OUT=$OUT: give the bundle a folder of its own" >&2; exit 2 ;;
  esac
fi
. scripts/gpu_common.sh   # PYTHONPATH, unbuffered output, $OUT/log.txt (a copy of all output), $OUT/nvidia-smi.txt
START=$(date +%s)

PACK=.device/cifar10-jpeg.pack            # scripts/gpu_stage.sh's CIFAR (one file travels; 60k small ones do not)
if [ -f "$PACK" ] && [ -n "${DNLIB_DATA:-}" ] && [ ! -d "$DNLIB_DATA/cifar10-jpeg" ]; then
  $PY scripts/pack_folder.py unpack "$PACK" "$DNLIB_DATA/cifar10-jpeg"
fi

REPORT_S=${REPORT_S:-60}
SECONDS_FOR_RUNS=$($PY -c "print(max(30.0, float('${BUDGET:-9}') * 60 - float('$REPORT_S')))")
ARGS=(--out "$OUT" --device "$DEVICE" --budget "$SECONDS_FOR_RUNS" --jobs "${JOBS:-1}" --seeds ${SEEDS:-0 1 2}
      --experiments ${EXPERIMENTS:-cifar sr ptb})
[ "${TINY:-0}" = 1 ] && ARGS+=(--tiny)
timeout -k 10 "$($PY -c "print(int($SECONDS_FOR_RUNS) + 30)")" $PY -m dnlib.experiments.campaign "${ARGS[@]}"
rc=$?
[ $rc = 124 ] && echo "gpu_paper: the campaign overran its budget by 30 s and was stopped (campaign.json: what was done)"

if [ "$REPORT_S" != 0 ]; then
  ABS_OUT=$(cd "$OUT" && pwd)
  rm -rf "$OUT/report"     # made from the records again (a rerun's suite would refuse a folder holding a run)
  $PY -m dnlib.notebook.suite run 06_results --profile full -p results_dir "$ABS_OUT" --out "$OUT/report/suite" \
    --no-progress || { echo "06_results failed (see $OUT/report/suite)"; rc=1; }
  $PY scripts/report.py --suite "$OUT/report/suite" --out "$OUT/report/html" || echo "report: rendering failed"
fi
echo "gpu_paper: $(( $(date +%s) - START )) s in all; tables: $OUT/tables.md$([ "$REPORT_S" != 0 ] \
  && echo ", report: $OUT/report/html/index.html")"
if [ -n "$BUNDLE" ]; then
  for f in campaign.json tables.md nvidia-smi.txt; do [ -f "$OUT/$f" ] && cp "$OUT/$f" "$BUNDLE/"; done
  tar czf "$BUNDLE/runs.tgz" --exclude=checkpoint.pt --exclude='events.out.tfevents.*' --exclude=./log.txt \
    -C "$OUT" . \
    && echo "gpu_paper: bundle $BUNDLE: $(ls "$BUNDLE" | tr '\n' ' ')($(du -sh "$BUNDLE" | cut -f1))"
  cp "$OUT/log.txt" "$BUNDLE/log.txt"
fi
exit $rc
