"""Copy the `analysis` experiment's finished run records into the committed results (notebook 08):

    .venv/bin/python scripts/analysis_collect.py runs/analysis/cpu            # -> results/records/analysis/<run>-cpu/
    .venv/bin/python scripts/analysis_collect.py runs/analysis/cpu --figures results/figures

Each run folder `<name>-s<seed>` becomes `results/records/analysis/<name>-s<seed>-<card>/` with its `record.json`
and `curves.csv` only (no checkpoint). A record whose git state is null (runs started before 8c82d4a, when the
records module looked for the repository one folder too high) gets a note saying so and naming the commit given
with --commit. Runs still `running` are left out. With --figures, the report's five figures are drawn there.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dnlib.experiments import records  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", help="a folder of analysis run folders (e.g. runs/analysis/cpu)")
    p.add_argument("--out", default=str(ROOT / "results/records/analysis"))
    p.add_argument("--commit", default=None, help="the commit the runs without a git state ran from (a note)")
    p.add_argument("--figures", default=None, help="also draw the report's figures into this folder")
    args = p.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    n = 0
    for d, rec in records.read_records([args.runs]):
        if rec.get("experiment") != "analysis" or rec.get("stopped") == "running":
            continue
        card = (rec.get("config") or {}).get("setup", {}).get("card") or "cpu"
        dest = out / f"{d.name}-{card}"
        dest.mkdir(parents=True)
        if rec.get("git") is None:
            rec = {**rec, "notes": [*(rec.get("notes") or []),
                                    "git state not recorded (records looked for the repository one folder too high "
                                    "before 8c82d4a)" + (f"; the run's code: commit {args.commit}" if args.commit
                                                         else "")]}
        records.write_record(dest, rec)
        if (d / "curves.csv").exists():
            shutil.copyfile(d / "curves.csv", dest / "curves.csv")
        n += 1
    print(f"{n} run records in {out}")
    if args.figures:
        from dnlib.experiments.analysis_report import report
        for f in report(out, figures=args.figures)["figures"]:
            print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
