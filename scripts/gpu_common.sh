# Sourced by scripts/gpu_*.sh, from the repository root, once they have set OUT: dnlib importable from this checkout,
# unbuffered output, everything the script prints also appended to $OUT/log.txt, and the card in $OUT/nvidia-smi.txt.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
