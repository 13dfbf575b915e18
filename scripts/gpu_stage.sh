#!/usr/bin/env bash
# Stage .device/ for one device call of scripts/gpu_paper.sh (issue 28). The GPU machine receives the working tree
# and the carried .device/ (64 MiB in all, small files counted by their disk blocks), has torch but none of the
# notebook packages, and reaches no network. This runs ../shared/tools/device-prep (the notebook wheels, PTB) and
# adds what it does not stage:
#   sr:    the sets the campaign's SR launches train and are read on: T91 (training), Set5, Set14 (Table 5) and
#          BSDS500/test (BSD200, Table 6): 41 MiB. Not device-prep's `sr`, which stages SelfExSR (20 MiB, MATLAB's
#          bicubic inputs, read by nothing the campaign runs) and no BSD200 (Table 6 then stays empty);
#   cifar: CIFAR-10's 60k JPEGs packed into one file (.device/cifar10-jpeg.pack, 55 MiB; gpu_paper.sh unpacks it
#          into $DNLIB_DATA), without the notebook wheels, which no longer fit: give that call REPORT_S=0 and run
#          06_results here on the records that come back.
# usage (repository root):  EXPERIMENTS="sr ptb" bash scripts/gpu_stage.sh      (default "sr ptb"; or "cifar")
#   DRY=1: list what would be staged (device-prep's arguments, each folder copied), stage nothing.
# then the device call that gpu_paper.sh's header gives. SHARED: the shared folder (default ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
EXPERIMENTS=${EXPERIMENTS:-sr ptb}
PY=${PY:-python3}
data=()
sr_sets=()
for e in $EXPERIMENTS; do
  case "$e" in
    ptb) data+=(ptb) ;;
    sr) sr_sets=(T91 Set5 Set14 BSDS500/test) ;;
    cifar) ;;
    *) echo "gpu_stage.sh: EXPERIMENTS: '$e' is not one of cifar, sr, ptb" >&2; exit 2 ;;
  esac
done
case " $EXPERIMENTS " in
  *" cifar "*) [ "${#data[@]}" = 0 ] && [ "${#sr_sets[@]}" = 0 ] || {
    echo "gpu_stage.sh: EXPERIMENTS: cifar fills a call on its own (55 MiB of JPEGs); stage it alone" >&2; exit 2; } ;;
esac
if [ "${DRY:-0}" = 1 ]; then
  echo "gpu_stage.sh: DRY=1: device-prep ${data[*]}"
  for s in "${sr_sets[@]}"; do echo "gpu_stage.sh: DRY=1: copy sr/$s from $SHARED/data to .device/data"; done
  case " $EXPERIMENTS " in *" cifar "*)
    echo "gpu_stage.sh: DRY=1: pack cifar10-jpeg from $SHARED/data to .device/cifar10-jpeg.pack" ;;
  esac
  exit 0
fi
"$SHARED/tools/device-prep" "${data[@]}"
for s in "${sr_sets[@]}"; do
  mkdir -p ".device/data/sr/$(dirname "$s")"
  cp -r "$SHARED/data/sr/$s" ".device/data/sr/$s"
done
case " $EXPERIMENTS " in *" cifar "*)
  $PY scripts/pack_folder.py pack "$SHARED/data/cifar10-jpeg" .device/cifar10-jpeg.pack ;;
esac
size_kb() {   # what travels: the working tree and .device/, in disk blocks
  local tree dev
  tree=$(git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  dev=$(du -sk .device | cut -f1)
  echo $((tree + dev))
}
if [ "$(size_kb)" -ge $((63 * 1024)) ]; then     # the notebook wheels go first: 06 then runs here (REPORT_S=0)
  find .device/wheels -name '*.whl' -delete
  echo "gpu_stage.sh: no room for the notebook wheels beside the data: give the call REPORT_S=0 and run" \
       "06_results here on the records that come back"
fi
echo "gpu_stage.sh: $(( $(size_kb) / 1024 )) MiB travel (working tree + .device/, disk blocks); the limit is 64 MiB"
[ "$(size_kb)" -lt $((63 * 1024)) ] || { echo "gpu_stage.sh: over the limit: stage fewer experiments" >&2; exit 1; }
