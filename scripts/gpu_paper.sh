#!/usr/bin/env bash
# The whole paper in one device budget (issue 28): Tables 3/7 (CIFAR-10), 5/6 (SR, x3) and 4/9 (PTB) x 3 seeds as
# stacked launches (dnlib.experiments.campaign), then 06_results on the records and the HTML report.
#
#   1. campaign: a short bench (seconds per step of the heaviest launch of each experiment), the plan (predicted
#      seconds per launch, launches at once that fit the card's memory), then every launch under the budget: a launch
#      whose share runs out stops at its step cap, inside a chunk, or at the chunk boundary where the next chunk
#      would not fit (or is built and not trained), and every copy records `stopped: time budget at step N`; nothing
#      is dropped. OUT/campaign.json (bench, plan, predicted vs actual), OUT/tables.md (every table beside the
#      paper's), a run folder per copy under OUT/<experiment>/<launch>/;
#   2. 06_results executed on OUT (mean ± std per row, n, the paper's number) and rendered to OUT/report/html.
# Rerunning the script in the same OUT resumes every unfinished launch from its checkpoint and skips finished ones
# (on a device: only on the same warm machine; checkpoints do not come back).
#
# Run from the repository root:  bash scripts/gpu_paper.sh          (everything lands in $OUT)
# Knobs (environment): OUT (runs/gpu_paper), DEVICE (cuda), BUDGET (minutes, default 9: from the script's start to
# the campaign's deadline plus REPORT_S; the campaign gets BUDGET*60 - REPORT_S - what the CIFAR unpack took, at least
# 30 s, and runs under a hard `timeout` of that + 30 s (then 10 s to a KILL); 06 and the report run after it,
# unbounded), REPORT_S (seconds kept for 06 and the report, default 60; 0: skip both, run them later where the records
# land), JOBS (launches at once, at most; default 1), SEEDS ("0 1 2"), EXPERIMENTS ("cifar sr ptb"), TINY (1: the CPU
# rehearsal's sizes), PY (python3), BUNDLE (a folder, not inside OUT, that receives the few files worth bringing back
# from a device call, at its top level: campaign.json, tables.md, nvidia-smi.txt, log.txt and runs.tgz, OUT without
# checkpoints and TensorBoard events; the device returns at most 8 files, 16 MiB each, 2 folders down).
# The bundle is refreshed after the bench and after every launch (each file replaced whole), so a call the device
# kills at its limit still brings back campaign.json, log.txt and the finished launches' records. SIGTERM or SIGINT
# (the hard timeout; a TERM to the script, which it passes on) stops the campaign: the launch in flight is recorded
# `interrupted at step N`, the later ones `not run: stopped by SIGTERM ...`, then tables.md and the bundle are written.
#
# On a GPU machine lent for one call (its working tree has no data and no notebook packages):
#   here:    EXPERIMENTS="sr ptb" bash scripts/gpu_stage.sh          (stages .device/: see that script)
#   device:  run(carry=[".device"], timeout_s=600, command=
#            'python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl;
#             export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH DNLIB_DATA=$PWD/.device/data;
#             python3 -m ipykernel install --user --name python3 >/dev/null 2>&1;
#             BUNDLE="$OUT" OUT=runs/gpu_paper BUDGET=8 REPORT_S=0 EXPERIMENTS="sr ptb" bash scripts/gpu_paper.sh')
#   (the device sets OUT to the folder that comes back: the campaign's own OUT must be another one)
#   The arithmetic of that call (timeout_s=600): pip and ipykernel take seconds (when the wheels were staged), the
#   CIFAR unpack counts inside BUDGET; BUDGET=8 with REPORT_S=0 gives the campaign 480 s from the script's start,
#   its launches end by 480 s less the campaign's reserve (48 s: tables.md, the bundle), its hard timeout sends TERM
#   at 510 s and KILL at 520 s, the final bundle takes seconds: 70-80 s to spare before the device's 600 s (and if
#   the device kills the call anyway, the bundle of the last finished launch comes back).
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
SPENT=$(( $(date +%s) - START ))          # the CIFAR unpack counts inside BUDGET
SECONDS_FOR_RUNS=$($PY -c "print(max(30.0, float('${BUDGET:-9}') * 60 - float('$REPORT_S') - $SPENT))")
ARGS=(--out "$OUT" --device "$DEVICE" --budget "$SECONDS_FOR_RUNS" --jobs "${JOBS:-1}" --seeds ${SEEDS:-0 1 2}
      --experiments ${EXPERIMENTS:-cifar sr ptb})
[ "${TINY:-0}" = 1 ] && ARGS+=(--tiny)
[ -n "$BUNDLE" ] && ARGS+=(--bundle "$BUNDLE")
STOPPED=
timeout -k 10 "$($PY -c "print(int($SECONDS_FOR_RUNS) + 30)")" $PY -m dnlib.experiments.campaign "${ARGS[@]}" &
CAMPAIGN=$!
trap 'STOPPED=1; kill -TERM "$CAMPAIGN" 2>/dev/null' TERM INT     # the campaign records what it did, then ends
rc=0; wait "$CAMPAIGN" || rc=$?
while kill -0 "$CAMPAIGN" 2>/dev/null; do rc=0; wait "$CAMPAIGN" || rc=$?; done   # (a signal ends a wait early)
trap - TERM INT
[ $rc = 124 ] && echo "gpu_paper: the campaign overran its budget by 30 s and was stopped (campaign.json: what was done)"
[ -n "$STOPPED" ] && echo "gpu_paper: stopped by a signal: 06 and the report are skipped; the bundle is written"

if [ "$REPORT_S" != 0 ] && [ -z "$STOPPED" ]; then
  ABS_OUT=$(cd "$OUT" && pwd)
  rm -rf "$OUT/report"     # made from the records again (a rerun's suite would refuse a folder holding a run)
  $PY -m dnlib.notebook.suite run 06_results --profile full -p results_dir "$ABS_OUT" --out "$OUT/report/suite" \
    --no-progress || { echo "06_results failed (see $OUT/report/suite)"; rc=1; }
  $PY scripts/report.py --suite "$OUT/report/suite" --out "$OUT/report/html" || echo "report: rendering failed"
fi
echo "gpu_paper: $(( $(date +%s) - START )) s in all; tables: $OUT/tables.md$([ "$REPORT_S" != 0 ] && [ -z "$STOPPED" ] \
  && echo ", report: $OUT/report/html/index.html")"
if [ -n "$BUNDLE" ]; then        # the campaign's last refresh, with the report and this log (each file replaced whole)
  $PY -c 'import sys; from dnlib.experiments.campaign import publish; print(" ".join(publish(*sys.argv[1:])))' \
    "$OUT" "$BUNDLE" | sed "s|^|gpu_paper: bundle $BUNDLE: |" || echo "gpu_paper: the bundle's last refresh failed"
fi
exit $rc
