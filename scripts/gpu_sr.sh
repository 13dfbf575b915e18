#!/usr/bin/env bash
# One GPU trip for super-resolution (issue 7; PAPER.md §3.4, Tables 5 and 6). Budget: <= 6 minutes.
#
# x3 SRCNN 9-5-5 trained on T91 with the "fast" configuration (Adam 1e-3, x0.1 at 70%/90%, batch 128 patches
# of one image, He init; NOT the paper's SGD 1e-4, which needs far longer) for each model in MODELS, as
# concurrent processes on the one GPU, each with a hard wall-clock cap: the step count that fits is set after
# a short timing stretch, so the learning-rate decays happen within the cap. Then every model is scored on
# Set5, Set14 and BSD200 (whichever are present under $DNLIB_DATA; absent ones are reported as missing), on
# the Y channel with the paper's 8-px border, beside Tables 5 (Set14) and 6 (BSD200).
#
# Before the trip, on the CPU side (stages T91, Set5, Set14, BSD200-test and the pure-Python resize-right
# package, which the GPU image lacks, under .device/; drops the SelfExSR copies to stay under 64 MiB):
#     bash scripts/gpu_sr.sh prep
# On the GPU machine (carry .device), from the repository root:
#     bash scripts/gpu_sr.sh
# Everything lands in $OUT: sr_results.json (the headline: table, card, steps reached), run_<model>.json
# (per model: steps, time, per-set results, training history), nvidia-smi.txt, log.txt, <model>.log.
# Knobs (environment): BUDGET (s, whole script, default 350), MODELS (default "none bn dn* dn*-code"),
# CONFIG (fast), SCALE (3), STEPS (upper bound on steps, default 300000: the cap decides), EVAL_EVERY (2000), DEVICE
# (cuda), SETS. A tiny CPU rehearsal:
#     OUT=/tmp/gsr DEVICE=cpu CONFIG=smoke STEPS=5 BUDGET=200 SETS="Set5" bash scripts/gpu_sr.sh
set -u
set -f   # MODELS holds "dn*": no globbing
cd "$(dirname "$0")/.."

if [ "${1:-}" = "prep" ]; then
  shared=$(cd ../shared && pwd)
  "$shared/tools/device-prep" sr >/dev/null
  rm -rf .device/data/sr/SelfExSR
  mkdir -p .device/data/sr/BSDS500 .device/pylib
  cp -r "$shared/data/sr/BSDS500/test" .device/data/sr/BSDS500/
  py=${PY:-.venv/bin/python}
  src=$($py -c 'import resize_right, os; print(os.path.dirname(resize_right.__file__))')
  cp -r "$src" .device/pylib/ && rm -rf .device/pylib/resize_right/__pycache__
  echo "staged: $(du -sh --apparent-size .device | cut -f1) in .device (data: $(ls .device/data/sr | tr '\n' ' '))"
  echo "GPU command (carry .device): bash scripts/gpu_sr.sh"
  echo "(.device/wheels, 18 MiB, is not needed by this script: remove it if the trip runs no notebook)"
  exit 0
fi

START=$(date +%s)
OUT=${OUT:-runs/gpu_sr}
mkdir -p "$OUT"
export DNLIB_DATA=${DNLIB_DATA:-$PWD/.device/data}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[ -d .device/pylib ] && export PYTHONPATH=$PYTHONPATH:$PWD/.device/pylib
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
BUDGET=${BUDGET:-350}
MODELS=${MODELS:-none bn dn* dn*-code}
CONFIG=${CONFIG:-fast}
SCALE=${SCALE:-3}
EVAL_EVERY=${EVAL_EVERY:-2000}
DEVICE=${DEVICE:-cuda}
SETS=${SETS:-Set5 Set14 BSD200}
STEP_ARGS=(--steps "${STEPS:-300000}")   # an upper bound: the time cap decides

exec > >(tee -a "$OUT/log.txt") 2>&1
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }
log() { echo "[gpu_sr $(elapsed)s] $*"; }

log "python $($PY -c 'import sys; print(sys.version.split()[0])'), torch $($PY -c 'import torch; print(torch.__version__, torch.cuda.is_available())')"
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
head -12 "$OUT/nvidia-smi.txt"
$PY -c "import resize_right" 2>/dev/null || { log "resize_right missing: run 'bash scripts/gpu_sr.sh prep' before the trip and carry .device"; exit 1; }
log "data under $DNLIB_DATA: $(ls "$DNLIB_DATA/sr" 2>/dev/null | tr '\n' ' ') $(ls "$DNLIB_DATA/sr/BSDS500" 2>/dev/null | tr '\n' ' ')"

# Leave ~70 s for start-up, the final evaluation (three sets) and the report.
CAP=$(( $(left) - 70 ))
log "training x$SCALE, config $CONFIG, models: $MODELS; concurrent; cap $CAP s each"
pids=()
for m in $MODELS; do
  name=${m//\*/star}
  timeout -k 5 $(( CAP + 60 )) $PY -m dnlib.sr train --norm "$m" --config "$CONFIG" --scale "$SCALE" \
    --device "$DEVICE" --time-limit "$CAP" --eval-every "$EVAL_EVERY" --sets $SETS --out "$OUT" \
    "${STEP_ARGS[@]}" > "$OUT/$name.log" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || log "run $i (pid ${pids[$i]}) failed or timed out: see $OUT/*.log"
done
set +f
for f in "$OUT"/*.log; do log "$(basename "$f"): $(tail -c 600 "$f")"; done

log "report"
timeout $(( $(left) > 30 ? $(left) : 30 )) $PY -m dnlib.sr report --out "$OUT" --sets $SETS
log "done"
