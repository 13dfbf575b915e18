"""Copy the `analysis` experiment's finished run records into the committed results (notebook 08):

    .venv/bin/python scripts/analysis_collect.py runs/analysis/cpu            # -> results/records/analysis/<run>-cpu/
    .venv/bin/python scripts/analysis_collect.py runs/analysis/cpu --figures results/figures

Each run folder `<name>-s<seed>` becomes `results/records/analysis/<name>-s<seed>-<card>/` with its `record.json`
and `curves.csv` only (no checkpoint). A record whose git state is null (runs started before 8c82d4a, when the
records module looked for the repository one folder too high) gets a note saying so and naming the commit given
with --commit. Runs still `running` are left out. With --figures, the report's five figures are drawn there.

The runs are read and checked first: a missing folder, or one with no finished analysis run record, is refused
(one line, exit 2) and --out is left as it was. The new records are written into a temporary sibling folder that
then replaces --out, so a failure part way leaves the old records in place.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dnlib import cli  # noqa: E402
from dnlib.experiments import records  # noqa: E402


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out``: the old ``out`` is moved aside, ``tmp`` renamed in, then the old
    one removed (if the rename fails, the old folder is put back)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="analysis_collect.py", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=cli.in_dir, help="a folder of analysis run folders (e.g. runs/analysis/cpu)")
    p.add_argument("--out", type=cli.out_dir, default=str(ROOT / "results/records/analysis"))
    p.add_argument("--commit", default=None, help="the commit the runs without a git state ran from (a note)")
    p.add_argument("--figures", type=cli.out_dir, default=None,
                   help="also draw the report's figures into this folder")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    with cli.user_errors(p):
        found = [(d, rec) for d, rec in records.read_records([args.runs])
                 if rec.get("experiment") == "analysis" and rec.get("stopped") != "running"]
    if not found:
        p.error(f"runs: {args.runs} holds no finished analysis run record; {out} is left as it was")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(found, tmp, args.commit)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(found)} run records in {out}")
    if args.figures:
        from dnlib.experiments.analysis_report import report
        for f in report(out, figures=args.figures)["figures"]:
            print(f)
    return 0


def _write(found: list, out: Path, commit: str | None) -> None:
    """Write each ``(run folder, record)`` of ``found`` as ``out/<run>-<card>/`` (record.json, curves.csv)."""
    out.mkdir(parents=True)
    for d, rec in found:
        card = (rec.get("config") or {}).get("setup", {}).get("card") or "cpu"
        dest = out / f"{d.name}-{card}"
        dest.mkdir(parents=True)
        if rec.get("git") is None:
            rec = {**rec, "notes": [*(rec.get("notes") or []),
                                    "git state not recorded (records looked for the repository one folder too high "
                                    "before 8c82d4a)" + (f"; the run's code: commit {commit}" if commit
                                                         else "")]}
        records.write_record(dest, rec)
        if (d / "curves.csv").exists():
            shutil.copyfile(d / "curves.csv", dest / "curves.csv")


if __name__ == "__main__":
    sys.exit(main())
