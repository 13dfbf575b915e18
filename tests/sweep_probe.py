"""A stand-in for a recipe's run process, for tests/test_sweep.py: ``python -m sweep_probe run ... --resume DIR``
records what its environment gave it (``CUDA_VISIBLE_DEVICES``, ``OMP_NUM_THREADS``) and when it ran in
``DIR/probe.json``, and leaves a completed record. It imports nothing heavy, so an engine's scheduling can be
tested with real processes in a fraction of a second each."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(argv) -> int:
    folder = Path(argv[argv.index("--resume") + 1])
    start = time.time()
    time.sleep(0.3)
    seen = {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": os.environ.get("OMP_NUM_THREADS"),
            "start": start, "end": time.time()}
    (folder / "probe.json").write_text(json.dumps(seen))
    (folder / "record.json").write_text(json.dumps({"experiment": "probe", "stopped": "completed"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
