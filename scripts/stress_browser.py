"""Stress the browser test's first step: open a notebook in JupyterLab (headless Chromium) and start Run All Cells,
many times, and count how often the kernel does not start.

    .venv/bin/python scripts/stress_browser.py                 # 01, 20 opens, two busy loops beside it
    .venv/bin/python scripts/stress_browser.py -n 40 --busy 0 --notebook 02_activation_explorer.ipynb

Each try is a fresh JupyterLab server on a copy of the notebook and a fresh Chromium page, through the same helpers
the browser test uses (``tests/test_browser.py``: ``_serve``, ``_prepare_session``, ``_open_and_run``, whose Run All
retries and reloads a stuck page), so it measures the real path. A try ends as

* ``ok``: a cell has run (its prompt shows a count: the kernel is executing the notebook); "Run All started at try
  N" when it took retries (a stuck page reloaded); with ``--to-end``, every cell has run (the save test's
  ``_run_to_end``; "reached the last cell at run N" when a stalled run was loaded and run again);
* ``failed``: the page never started executing (``Run All Cells did not start the kernel``), or any other error
  (its server log and a screenshot are kept under runs/browser/);

and the server's log gives how many kernels JupyterLab started and shut down for it (a stuck page that accepts
"Select Kernel" starts one more per accept). ``--cold`` drops the page cache before each try, so the kernel starts
slowly (the page then shows idle a second or more before it connects to its kernel: a Run All clicked then ran
nothing). ``--busy`` spawns that many busy-loop processes for the whole run, as the xdist worker beside the browser
test loads the machine in ``make test``. ``--no-session`` lets the page start its own
kernel (the path before ``_prepare_session``). A script, not a test.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _busy() -> None:
    while True:
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20, help="tries (default 20)")
    ap.add_argument("--notebook", default="01_unified_view.ipynb", help="a notebook of notebooks/ (default 01)")
    ap.add_argument("--busy", type=int, default=2, help="busy-loop processes beside it (default 2)")
    ap.add_argument("--to-end", action="store_true",
                    help="also wait until every cell has run (the save test's _run_to_end: reloads a stalled run)")
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before each try (root only): a slow kernel start")
    ap.add_argument("--no-session", action="store_true",
                    help="let the page start its kernel (the path before the fix) instead of _prepare_session")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"-n must be >= 1, got {args.n}")
    if not (REPO / "notebooks" / args.notebook).is_file():
        ap.error(f"--notebook {args.notebook!r} is not a file of notebooks/")
    sys.path.insert(0, str(REPO / "tests"))
    import test_browser as tb
    from playwright.sync_api import sync_playwright

    busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()
    counts = {"ok": 0, "failed": 0}
    started = shutdown = retried = 0
    try:
        for i in range(args.n):
            if args.cold:
                os.sync()
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                root = tmp / "lab"
                root.mkdir()
                tb._copy_notebook(args.notebook, root)
                t0 = time.time()
                with tb._serve(root, tmp) as (base, token), sync_playwright() as p:
                    browser = tb._browser(p)
                    try:
                        if not args.no_session:
                            tb._prepare_session(base, token, args.notebook)
                        page = tb._open_and_run(browser, f"{base}/lab/tree/{args.notebook}?token={token}")
                        outcome, why = "ok", ""
                        if args.to_end:
                            nb = (root / args.notebook).read_text(encoding="utf-8")
                            tb._run_to_end(page, nb)
                        if page.run_all_tries > 1:
                            why = f"Run All started at try {page.run_all_tries}"
                            retried += 1
                        if getattr(page, "run_to_end_tries", 1) > 1:
                            why += f" reached the last cell at run {page.run_to_end_tries}"
                            why += "".join(f"\n    stalled: {m}" for m in page.run_to_end_stalls)
                            retried += 1
                    except Exception as e:  # noqa: BLE001  counted, with its message
                        outcome, why = "failed", str(e).splitlines()[0][:120]
                        shots = REPO / "runs" / "browser"
                        shots.mkdir(parents=True, exist_ok=True)
                        for context in browser.contexts:
                            for page in context.pages:
                                page.screenshot(path=str(shots / f"stress-try-{i + 1}.png"))
                    finally:
                        browser.close()
                log = (tmp / "lab.log").read_text(errors="replace")
                k_start, k_stop = log.count("Kernel started"), log.count("Kernel shutdown")
                started += k_start
                shutdown += k_stop
                counts[outcome] += 1
                if outcome == "failed":  # kept for reading: the server's log of the failed try
                    kept = REPO / "runs" / "browser" / f"stress-try-{i + 1}-lab.log"
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    kept.write_text(log)
                    why += f" (log: {kept.relative_to(REPO)})"
                print(f"try {i + 1:3d}/{args.n}: {outcome:6s} {time.time() - t0:5.1f} s, kernels started {k_start}, "
                      f"shut down {k_stop} {why}", flush=True)
    finally:
        for p in busy:
            p.terminate()
    load = os.getloadavg()[0]
    print(f"\n{args.notebook}, {args.n} tries, {args.busy} busy loops, load {load:.1f}: ok {counts['ok']}, "
          f"failed {counts['failed']} (ok after a retry: {retried}); kernels started {started}, shut down {shutdown} "
          f"(the server's own shutdown included)")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
