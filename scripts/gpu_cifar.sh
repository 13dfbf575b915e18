#!/usr/bin/env bash
# One GPU trip for the CIFAR experiments (issue 5; PAPER.md §3.1, Tables 3 and 7). Budget: <= 8 minutes.
#
#   1. decode the data once (CIFAR-10, official pickles or the JPEG copy under $DNLIB_DATA) into the cache;
#   2. graph check: 5 CUDA-graph steps against 5 eager steps from the same init, for each config run below;
#      if any disagrees, the runs fall back to eager mode (recorded in summary.json);
#   3. bench: single-process training images/s of all 13 Table 7 configurations (batch 100); with IMPL=best
#      (default) also the normalized ones with torch.compile'd normalizers (DivisiveNorm impl="compile", checked
#      against the uncompiled eager step first), and the sweep uses compile if it is faster for DN*;
#   4. the paper's full schedule for Baseline, BN, BN* and DN* on CIFAR-10, as 4 concurrent processes on the
#      one GPU, each with a hard time cap (a capped run stops at an evaluation and reports itself capped);
#   5. report: accuracies beside the paper's, images/s per run, card, estimated time of the whole Table 7.
#
# Run from the repository root on the GPU machine (data staged under .device/data, written to $OUT):
#     bash scripts/gpu_cifar.sh
# Everything lands in $OUT: summary.json (the headline), nvidia-smi.txt, graph_check.json, bench.json,
# sweep/{table.json,table.md,sweep.json,<run>/{log.txt,history.json,result.json}}, log.txt.
# Knobs (environment): BUDGET (s, whole script, default 450), CONFIGS, JOBS, EVAL_EVERY, STEPS (empty: the paper's
# schedule), SUBSET, DEVICE, BENCH_STEPS, BENCH_CONFIGS, IMPL (auto|compile|best, default best), COMPILE_CONFIGS.
# A tiny CPU rehearsal:
#     OUT=/tmp/g DEVICE=cpu STEPS=6 SUBSET=300,100 EVAL_EVERY=2 BENCH_STEPS=2 BENCH_WARMUP=1 \
#         BENCH_CONFIGS="base dn-star" CONFIGS="base dn-star" JOBS=2 bash scripts/gpu_cifar.sh
set -u
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-runs/gpu_cifar}
mkdir -p "$OUT"
export DNLIB_DATA=${DNLIB_DATA:-$PWD/.device/data}
export DNLIB_CACHE=${DNLIB_CACHE:-${TMPDIR:-/tmp}/dnlib-cache}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
BUDGET=${BUDGET:-450}
CONFIGS=${CONFIGS:-base bn bn-star dn-star}
JOBS=${JOBS:-4}
EVAL_EVERY=${EVAL_EVERY:-1000}
DEVICE=${DEVICE:-cuda}
BENCH_STEPS=${BENCH_STEPS:-300}
BENCH_WARMUP=${BENCH_WARMUP:-20}
BENCH_CONFIGS=${BENCH_CONFIGS:-all}
IMPL=${IMPL:-best}
COMPILE_CONFIGS=${COMPILE_CONFIGS:-dn-star dn bn-star ln-star}
SIZE_ARGS=()
[ -n "${STEPS:-}" ] && SIZE_ARGS+=(--steps "$STEPS")
DATA_ARGS=(--device "$DEVICE")
[ -n "${SUBSET:-}" ] && DATA_ARGS+=(--subset "$SUBSET")

exec > >(tee -a "$OUT/log.txt") 2>&1
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }
log() { echo "[gpu_cifar $(elapsed)s] $*"; }

log "python $($PY -c 'import sys; print(sys.version.split()[0])'), torch $($PY -c 'import torch; print(torch.__version__, torch.cuda.is_available())')"
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
head -15 "$OUT/nvidia-smi.txt"

log "1/5 data (DNLIB_DATA=$DNLIB_DATA)"
timeout 150 $PY -c "
from dnlib.data import load_cifar
d = load_cifar('cifar10', download=False, progress=False)
print(d.description, d.x_train.shape, d.x_test.shape, f'{d.load_seconds:.1f} s')" || { log "data failed"; exit 1; }

log "2/5 graph check"
MODE=auto
if ! timeout 120 $PY -m dnlib.cifar check-graph $CONFIGS --steps 5 "${DATA_ARGS[@]}" --json "$OUT/graph_check.json"; then
  MODE=eager
  log "graph check FAILED or timed out: the runs below use eager mode"
fi

log "3/5 bench ($BENCH_STEPS steps per config)"
timeout $(( $(left) > 300 ? 100 : 40 )) $PY -m dnlib.cifar bench $BENCH_CONFIGS --steps "$BENCH_STEPS" --warmup "$BENCH_WARMUP" --mode "$MODE" \
  "${DATA_ARGS[@]}" --json "$OUT/bench.json" || log "bench incomplete"

if [ "$IMPL" != auto ]; then
  log "3b/5 torch.compile'd normalizers: check against the uncompiled eager step, then bench ($COMPILE_CONFIGS)"
  if timeout $(( $(left) > 300 ? 150 : 60 )) $PY -m dnlib.cifar check-graph $COMPILE_CONFIGS --steps 5 --impl compile \
       "${DATA_ARGS[@]}" --json "$OUT/graph_check_compile.json" \
     && timeout $(( $(left) > 300 ? 120 : 40 )) $PY -m dnlib.cifar bench $COMPILE_CONFIGS --steps "$BENCH_STEPS" \
       --warmup "$BENCH_WARMUP" --mode "$MODE" --impl compile "${DATA_ARGS[@]}" --json "$OUT/bench_compile.json"; then
    if [ "$IMPL" = best ]; then
      IMPL=$($PY -c "
import json
a = {b['config']: b['images_per_s'] for b in json.load(open('$OUT/bench.json'))}
c = {b['config']: b['images_per_s'] for b in json.load(open('$OUT/bench_compile.json'))}
print('compile' if c.get('dn-star', 0) > a.get('dn-star', 0) else 'auto')" 2>/dev/null || echo auto)
    fi
  else
    log "compiled normalizers failed the check or timed out: the sweep uses impl auto"
    IMPL=auto
  fi
fi
[ "$IMPL" = best ] && IMPL=auto

CAP=$(( $(left) - 60 ))
[ "$CAP" -gt 320 ] && CAP=320
log "4/5 sweep: $CONFIGS, $JOBS concurrent, mode $MODE, impl $IMPL, cap $CAP s per run"
if [ "$CAP" -gt 20 ]; then
  timeout $(( CAP + 45 )) $PY -m dnlib.cifar sweep $CONFIGS --jobs "$JOBS" --out "$OUT/sweep" --max-seconds "$CAP" \
    --status-every 30 --eval-every "$EVAL_EVERY" --mode "$MODE" --impl "$IMPL" "${DATA_ARGS[@]}" "${SIZE_ARGS[@]}" \
    || log "sweep incomplete (partial results gathered)"
else
  log "no time left for the sweep"
fi

log "5/5 report"
$PY -m dnlib.cifar gather "$OUT/sweep" > /dev/null 2>&1 || true
$PY -m dnlib.cifar report "$OUT" | tee /dev/null | head -80
[ -f "$OUT/sweep/table.md" ] && cat "$OUT/sweep/table.md"
log "done in $(elapsed) s"
