"""Stress the interrupt at shutdown: run ``tests/test_kernel_shutdown.py``'s timed-out-cell test many times, with
busy processes beside it, and count the runs whose kernel's process group did not record the SIGINT.

    .venv/bin/python scripts/stress_kernel_shutdown.py -n 30 --load 4

That test failed once in CI (2026-12-07): at shutdown jupyter_client sends SIGINT to the kernel's process group and
then the shutdown request, on which ipykernel SIGTERMs the kernel's children; the test's child, not scheduled in
between, died of the SIGTERM before Python ran its SIGINT handler. Each run here is a fresh pytest process (its own
kernel and child); ``--load`` busy loops keep the cores contended, as two pytest workers do in ``make test``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST = "tests/test_kernel_shutdown.py::test_a_cell_still_running_is_interrupted_at_shutdown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20, help="runs (default 20)")
    ap.add_argument("--load", type=int, default=2, help="busy processes beside the runs (default 2)")
    args = ap.parse_args(argv)
    if args.n < 1 or args.load < 0:
        ap.error(f"-n {args.n} / --load {args.load}: -n takes 1 or more, --load 0 or more")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    failed, times = 0, []
    try:
        for i in range(args.n):
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST], cwd=REPO,
                                 capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            failed += res.returncode != 0
            last = (res.stdout.strip().splitlines() or [""])[-1]
            print(f"run {i + 1}/{args.n}: {'ok' if res.returncode == 0 else 'FAILED'} ({times[-1]:.1f} s) {last}",
                  flush=True)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    print(f"{failed} of {args.n} runs failed (load {args.load} busy processes; "
          f"{min(times):.1f}-{max(times):.1f} s a run)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
