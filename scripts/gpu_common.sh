# Sourced by scripts/gpu_*.sh, from the repository root, once they have set OUT: dnlib importable from this checkout,
# unbuffered output, everything the script prints also appended to $OUT/log.txt, and the card in $OUT/nvidia-smi.txt.
# The tee ignores SIGTERM/SIGINT (it ends when the script's output closes): a stop sent to the script's process group
# (an outer `timeout`) leaves it copying what the script prints while it records what it did (gpu_paper.sh).
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
exec > >(trap '' TERM INT; exec tee -a "$OUT/log.txt") 2>&1
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
