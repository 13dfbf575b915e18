"""Stress the notebook runner: execute notebooks through ``python -m dnlib.notebook.suite run`` many times and count
hangs.

    .venv/bin/python scripts/stress_notebooks.py                      # 02 and 05, 30 runs each, smoke profile
    .venv/bin/python scripts/stress_notebooks.py -n 5 --notebooks 05 --write results/cpu/stress_notebooks.txt

Each run is a fresh ``python -m dnlib.notebook.suite run --profile smoke --no-progress`` process (its own kernel), with
outputs under a temporary folder. A run ends as

* ``ok``: exit status 0;
* ``stalled``: the suite's stall watch failed a cell whose kernel was idle and never answered (a hang, caught);
* ``failed``: any other failure (exit status != 0), with the last line of its error;
* ``hang``: both the runner and its kernel used no CPU for ``--idle`` seconds (an uncaught hang); the processes
  are dumped with ``py-spy`` when it is installed, then killed;
* ``over limit``: still running (and busy) after ``--limit`` seconds; killed.

The summary gives the counts and the run times (min/median/max of finished runs) per notebook. This is a
script, not a unit test: it takes minutes per run on a loaded machine.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_NOTEBOOKS = ("02_activation_explorer.ipynb", "05_super_resolution.ipynb")
OUTCOMES = ("ok", "stalled", "failed", "hang", "over limit")


def _cpu_seconds(pids) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return [pid]


def _kill_tree(pids) -> None:
    import psutil

    for pid in reversed(pids):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def _py_spy_dump(pids, dest: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return
    with open(dest, "w") as fh:
        for pid in pids:
            fh.write(f"===== py-spy dump --pid {pid}\n")
            fh.flush()
            subprocess.run([spy, "dump", "--pid", str(pid)], stdout=fh, stderr=subprocess.STDOUT, timeout=60)


def run_once(notebook: Path, out: Path, limit: float, idle: float, profile: str) -> tuple[str, float, str]:
    """One suite run; returns (outcome, seconds, detail)."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "suite.log"
    cmd = [sys.executable, "-m", "dnlib.notebook.suite", "run", "--profile", profile, "--no-progress",
           "--out", str(out), str(notebook)]
    start = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        cpu_mark, quiet_since = None, time.monotonic()
        while True:
            try:
                rc = proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            pids = _tree(proc.pid)
            cpu = _cpu_seconds(pids)
            if cpu_mark is None or cpu - cpu_mark > 0.5 or len(pids) < 2:  # working, or the kernel not up yet
                cpu_mark, quiet_since = cpu, now
            if now - quiet_since > idle:
                _py_spy_dump(pids, out / "py-spy.txt")
                _kill_tree(pids)
                proc.wait()
                return "hang", now - start, f"runner and kernel idle for {now - quiet_since:.0f} s; see {out}"
            if now - start > limit:
                _kill_tree(pids)
                proc.wait()
                return "over limit", now - start, f"still busy after {limit:.0f} s"
    seconds = time.monotonic() - start
    if rc == 0:
        return "ok", seconds, ""
    text = log.read_text(errors="replace")
    detail = next((line for line in reversed(text.splitlines()) if "raised" in line), text.strip()[-300:])
    return ("stalled" if "CellStalled" in text else "failed"), seconds, detail


def summarize(rows: list[tuple[str, int, str, float, str]], notebooks) -> str:
    """The counts per outcome and the run times per notebook, then every run that was not ok.
    ``rows``: (notebook, run index, outcome, seconds, detail)."""
    lines = [f"{'notebook':<30} {'runs':>4} " + " ".join(f"{o:>10}" for o in OUTCOMES)
             + "   seconds (min / median / max of finished runs)"]
    for nb in notebooks:
        mine = [r for r in rows if r[0] == nb]
        counts = [sum(1 for r in mine if r[2] == o) for o in OUTCOMES]
        times = [r[3] for r in mine if r[2] in ("ok", "stalled", "failed")]
        span = (f"{min(times):.1f} / {statistics.median(times):.1f} / {max(times):.1f}" if times else "-")
        lines.append(f"{nb:<30} {len(mine):>4} " + " ".join(f"{c:>10}" for c in counts) + f"   {span}")
    bad = [r for r in rows if r[2] != "ok"]
    if bad:
        lines.append("not ok:")
        lines += [f"  {nb} run {i + 1}: {outcome} after {sec:.1f} s: {detail}" for nb, i, outcome, sec, detail in bad]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=30, help="runs per notebook (default 30)")
    parser.add_argument("--notebooks", nargs="+", default=list(DEFAULT_NOTEBOOKS),
                        help="notebook names or number prefixes (default: 02 and 05)")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--limit", type=float, default=1200.0, help="seconds a busy run may take (default 1200)")
    parser.add_argument("--idle", type=float, default=90.0,
                        help="seconds with runner and kernel both idle that count as a hang (default 90)")
    parser.add_argument("--keep", default=None, help="folder for the runs' outputs (default: a temporary folder)")
    parser.add_argument("--write", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    if args.limit <= 0 or args.idle <= 0:
        parser.error("--limit and --idle must be > 0")
    sys.path.insert(0, str(REPO))
    from dnlib.notebook.suite import discover

    paths = discover(args.notebooks)
    os.environ.setdefault("MPLBACKEND", "agg")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dnlib-stress-"))
    rows = []
    began = time.strftime("%Y-%m-%d %H:%M:%S")
    for i in range(args.runs):
        for path in paths:  # interleaved, so both notebooks see the same machine load
            outcome, seconds, detail = run_once(path, root / path.stem / str(i), args.limit, args.idle, args.profile)
            rows.append((path.name, i, outcome, seconds, detail))
            print(f"[stress] {path.name} run {i + 1}/{args.runs}: {outcome} in {seconds:.1f} s"
                  + (f": {detail}" if detail else ""), flush=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    text = (f"stress_notebooks: {args.runs} runs each, profile {args.profile}, started {began}, ended "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, load average at the end {load[0]}\n"
            + summarize(rows, [p.name for p in paths]) + "\n")
    print(text)
    if args.write:
        dest = Path(args.write)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(dest.suffix + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r[2] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
