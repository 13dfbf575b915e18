"""Stress the run-folder claim (dnlib/experiments/claim.py): start two ``dnlib ptb run --resume DIR`` of one folder at
the same instant, many times, and count the rounds where not exactly one trained.

    .venv/bin/python scripts/stress_claim.py -n 20

Each round uses a fresh folder; the two processes race through their checks and builds. A round is right when one
exits 0 with its run completed and the other exits 2 with the one line ``... is in use ...`` (whichever wins), and
the folder's record says completed at the planned step. Before the claim, both exited 0 after training the folder
in turn. Needs PTB in ``$DNLIB_DATA``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLAGS = ["--max-tokens", "3000", "--vocab", "200", "--eval-every", "2", "--hidden-size", "16", "--batch-size", "4",
         "--device", "cpu", "--steps", "6", "--no-progress"]


def one_round(folder: Path) -> str:
    """``""`` when exactly one of two simultaneous resumes trained ``folder``, else what went wrong."""
    cmd = [sys.executable, "-m", "dnlib", "ptb", "run", "ln-star-lstm", "--resume", str(folder), *FLAGS]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in outs)
    refused = [err for code, _, err in outs if code == 2]
    if codes != [0, 2]:
        last = [err.strip().splitlines()[-1] if err.strip() else "" for *_, err in outs]
        return f"exit codes {codes}: " + " | ".join(last)
    if refused[0].count("\n") != 1 or " is in use: " not in refused[0]:
        return f"the refused run said: {refused[0]!r}"
    rec = json.loads((folder / "record.json").read_text())
    if (rec["stopped"], rec["steps_done"]) != ("completed", 6):
        return f"record: {rec['stopped']} at step {rec['steps_done']}"
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20, help="rounds (default 20)")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"-n {args.n}: takes 1 or more")
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            t0 = time.perf_counter()
            problem = one_round(Path(tmp) / f"r{i}")
            bad += bool(problem)
            print(f"round {i + 1}/{args.n}: {'ok' if not problem else 'WRONG: ' + problem} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"{args.n - bad} of {args.n} rounds: exactly one run trained the folder, the other was refused in one line")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
