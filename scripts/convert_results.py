"""Convert the committed results (made before run records existed) into run records.

    .venv/bin/python scripts/convert_results.py            # writes results/records/<experiment>/<run>/
    .venv/bin/python scripts/convert_results.py --check    # exit 1 when the committed records differ from a fresh
    conversion

Sources (kept as they are: their READMEs cite them, and this script reads them):

- ``results/h100/cifar_summary.json`` (+ Table 10's correlation/MI from ``results/h100/README.md``): CIFAR-10
  Baseline / BN / BN* / DN*, full schedule, one H100, 2026-11-27;
- ``results/h100/sr_results.json``: SR x3, the *fast* Adam configuration, about 2 minutes each on a shared H100
  (and the bicubic baseline, measured, not trained);
- ``results/h100/ptb_results.json``: PTB LSTMs under a 291 s cap on the same card (stopped by the time limit);
- ``results/cpu/ptb/*-lstm.json``: PTB LSTMs, all 13 epochs on the 2-core CPU, 2026-11-27.

Each run becomes a folder with ``record.json`` (:func:`dnlib.experiments.records.make_record`'s keys) and, where the
source has per-epoch numbers (PTB), ``curves.csv``. Provenance is what the sources say and nothing more: the git commit
of the code that ran them was not recorded (``git: null``), nor the seed (``seed: null``, except CIFAR's, which its
source gives), nor start/end times (``started``/``ended`` null; ``date`` is the READMEs' day). Every record carries
``converted_from`` (the source files) and ``notes`` (what was derived and how).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dnlib import cli
from dnlib.experiments import records

H100 = "NVIDIA H100 80GB HBM3"
H100_DATE = "2026-11-27"          # results/h100/README.md title
CPU_DATE = "2026-11-27"           # results/cpu/README.md title
CPU_NAME = "2-core CPU"             # results/cpu/README.md: this repository's 2-core CPU machine
CIFAR_DATA = "CIFAR-10 (JPEG copy)"    # lossy, quality ~75: shared/data/README.md
PTB_DATA = "PTB (Mikolov), 929,589 training tokens, 10,000 words"
SR_DATA = "T91 (training), Set5 / Set14 / BSD200 (test), x3, MATLAB-compatible bicubic"
CIFAR_NAMES = {"Baseline": "base", "BN": "bn", "BN*": "bn-star", "DN*": "dn-star"}
SR_NAMES = {"SRCNN": "fast-none", "BN": "fast-bn", "DN*": "fast-dn*", "DN* (code)": "fast-dn*-code"}
SR_SETS = ("Set5", "Set14", "BSD200")


def _committed_in(path: Path) -> str | None:
    """The commit that added ``path`` (the results, not the code that made them)."""
    try:
        out = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", str(path.relative_to(ROOT))],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    return lines[-1] if out.returncode == 0 and lines else None


def _record(experiment, name, config, seed, *, device, versions, date, steps_planned, steps_done, stopped,
            headline, paper, sources, notes):
    prov = {"git": None, "versions": {"dnlib": None, "torch": None, "numpy": None, "python": None, **versions},
            "device": device, "host": None}
    rec = records.make_record(experiment, config, seed, name=name, steps_planned=steps_planned,
                              steps_done=steps_done, stopped=stopped, headline=headline, paper=paper, prov=prov)
    rel = [str(Path(s).relative_to(ROOT)) for s in sources]
    rec["date"] = date
    rec["converted_from"] = rel
    rec["source_commits"] = {r: _committed_in(Path(s)) for r, s in zip(rel, sources)}
    rec["notes"] = [f"converted from {', '.join(rel)} by scripts/convert_results.py; unknown fields are null"] + notes
    return rec


def _write(out: Path, rec: dict, tag: str, curves=None) -> Path:
    """``out/<experiment>/<name>[-s<seed>]-<tag>/`` with record.json (and curves.csv)."""
    d = out / rec["experiment"] / (records.run_name(rec["name"].replace("*", "-star"), rec["seed"]) + "-" + tag)
    d.mkdir(parents=True, exist_ok=True)
    records.write_record(d, rec)
    if curves:
        records.write_curves(d, curves)
    return d


# ----------------------------------------------------------------------------------------------- CIFAR
def _table10(readme: Path) -> dict:
    """``{row: (corr, paper corr, mi, paper mi)}`` from the Table 10 lines of results/h100/README.md."""
    text = readme.read_text()
    part = text.split("Table 10 on these models", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in CIFAR_NAMES:
            out[cells[0]] = tuple(float(c) for c in cells[1:])
    return out


def cifar(out: Path) -> list:
    src, readme = ROOT / "results/h100/cifar_summary.json", ROOT / "results/h100/README.md"
    s = json.loads(src.read_text())
    t10 = _table10(readme)
    dirs = []
    for r in s["runs"]:
        corr, p_corr, mi, p_mi = t10.get(r["paper_row"], (None,) * 4)
        rec = _record(
            "cifar", r["config"],
            {"name": r["config"], "paper": r["paper_row"], "dataset": "cifar10", "steps": r["planned_steps"],
             "batch_size": 100, "setup": {"data": r["data"], "mode": r["mode"], "card": s["device"]}},
            r["seed"], device={"type": "cuda", "name": s["device"], "threads": None},
            versions={"torch": s["torch"]}, date=H100_DATE, steps_planned=r["planned_steps"], steps_done=r["steps"],
            stopped="completed" if r["status"] == "done" and not r["capped"] else r["status"],
            headline={"final_acc": r["final_acc"], "best_acc": None, "images_per_s": r["images_per_s"],
                      "train_seconds": None, "table10_corr": corr, "table10_mi": mi},
            paper={"final_acc": r["paper_acc"], "table10_corr": p_corr, "table10_mi": p_mi},
            sources=[src, readme],
            notes=["images_per_s: this run's throughput while 4 runs shared the card (cifar_summary.json); alone "
                   f"it ran at {s['single_run_images_per_s'][r['config']]:.0f} img/s",
                   "table10_corr / table10_mi: Table 10 on this model (500 test images, all first-layer filter "
                   "pairs, mean |r| and 20-bin plug-in MI in nats) from results/h100/README.md",
                   "best_acc and train_seconds were not recorded"])
        dirs.append(_write(out, rec, "h100"))
    return dirs


# -------------------------------------------------------------------------------------------------- SR
def sr(out: Path) -> list:
    src = ROOT / "results/h100/sr_results.json"
    s = json.loads(src.read_text())
    dirs = []
    for label in ["Bicubic", *s["runs"]]:
        run = s["runs"].get(label)
        head, paper = {}, {}
        for st in SR_SETS:
            row = s["table"].get(st, {}).get(label, {})
            for m in ("psnr", "ssim"):
                head[f"{st.lower()}_{m}"] = row.get(m)
                if st != "Set5":
                    paper[f"{st.lower()}_{m}"] = row.get(f"paper_{m}")
        name = "bicubic" if run is None else SR_NAMES[label]
        notes = ["PSNR/SSIM on Y, 8-px border, prediction clipped not rounded (sr_results.json note); "
                 "the paper gives no Set5 numbers"]
        if run is None:
            notes.append("bicubic interpolation: measured on the test sets, nothing trained")
            config = {"name": name, "scale": s["scale"],
                      "setup": {"data": SR_DATA.split(", ", 1)[1], "card": s["card"]}}
            steps, stopped = 0, "completed"
        else:
            head["train_seconds"] = run["train_seconds"]
            config = {"name": name, "schedule": run["config"], "kind": run["kind"], "norm": name.split("-", 1)[1],
                      "scale": s["scale"], "train_set": run["train_set"],
                      "setup": {"data": SR_DATA, "card": s["card"]}}
            steps = run["steps"]
            stopped = "completed" if run["stopped_by"] == "steps" else run["stopped_by"]
            notes.append(f"stopped_by {run['stopped_by']!r} in the source: the run ended at its step budget "
                         f"({steps} steps, about 2 minutes of a card shared with the PTB runs); the budget it was "
                         "given was not recorded (steps_planned null)")
        rec = _record("sr", name, config, None, device={"type": "cuda", "name": s["card"], "threads": None},
                      versions={"torch": s["torch"]}, date=H100_DATE, steps_planned=None if run else 0,
                      steps_done=steps, stopped=stopped, headline=head, paper=paper, sources=[src], notes=notes)
        dirs.append(_write(out, rec, "h100"))
    return dirs


# ------------------------------------------------------------------------------------------------- PTB
def _ptb_curves(run: dict) -> list:
    """One row per epoch: step (epoch x batches per epoch), epoch, the source's per-epoch numbers, and ``time``
    (cumulative training + evaluation seconds, summed from the source's per-epoch times)."""
    per, t, rows = run["batches_per_epoch"], 0.0, []
    for e in run["epochs"]:
        t += (e.get("epoch_time") or 0.0) + (e.get("eval_time") or 0.0)
        rows.append({"step": e["epoch"] * per, "epoch": e["epoch"], "lr": e["lr"], "time": round(t, 3),
                     "train_nll_per_word": e.get("train_nll_per_word"), "valid_ppl": e["valid_ppl"],
                     "test_ppl": e["test_ppl"], "epoch_time": e.get("epoch_time"), "eval_time": e.get("eval_time"),
                     "tokens_per_s": e.get("tokens_per_s")})
    if run.get("final_test_ppl") is not None and rows:
        rows[-1]["final_test_ppl"] = run["final_test_ppl"]
    return rows


def _ptb(out: Path, name: str, run: dict, *, src: Path, device: dict, versions: dict, date: str, tag: str,
         tokens_per_s, notes: list) -> Path:
    per, done = run["batches_per_epoch"], len(run["epochs"])
    last = run["epochs"][-1] if run["epochs"] else {}
    stopped = run["stopped"]
    if stopped != "completed":
        notes = notes + [f"stopped in the source: {stopped!r}"
                         + (f"; final test pass: {run['final_test_skipped']}" if run.get("final_test_skipped") else "")]
        stopped = f"time limit at step {done * per}" if stopped.startswith("time limit") else stopped
    epoch_times = [e.get("epoch_time") for e in run["epochs"]]
    rec = _record(
        "ptb", name, {**run["config"], "setup": {"data": PTB_DATA, "card": run["card"], "train_tokens":
                                                 run["train_tokens"], "batches_per_epoch": per,
                                                 "final_test_batch_size": run.get("final_test_batch_size"),
                                                 "mode": "cuda-graph" if run.get("graph") else "eager"}},
        None, device=device, versions=versions, date=date, steps_planned=run["epochs_planned"] * per,
        steps_done=done * per, stopped=stopped,
        headline={"valid_ppl": last.get("valid_ppl"), "test_ppl": last.get("test_ppl"),
                  "final_test_ppl": run.get("final_test_ppl"), "epochs": float(done), "tokens_per_s": tokens_per_s,
                  "train_seconds": (round(sum(epoch_times), 3) if all(t is not None for t in epoch_times) else None)},
        paper={"final_test_ppl": run.get("paper_test_ppl")}, sources=[src],
        notes=notes + ["test_ppl: 20 streams after the last epoch; final_test_ppl: the one-stream (batch "
                       f"{run.get('final_test_batch_size')}) test pass at the end, as the authors' code reports it",
                       "train_seconds: the sum of the source's per-epoch training times; curves.csv time: "
                       "cumulative training + evaluation seconds"])
    return _write(out, rec, tag, _ptb_curves(run))


def ptb(out: Path) -> list:
    dirs = []
    cpu_summary = json.loads((ROOT / "results/cpu/ptb/summary.json").read_text())
    for src in sorted((ROOT / "results/cpu/ptb").glob("*-lstm.json")):
        run = json.loads(src.read_text())
        name = run["config"]["name"]
        notes = [f"tokens_per_s from results/cpu/ptb/summary.json ({cpu_summary[name]['tokens_per_s']:.0f})"]
        if name == "base-lstm":
            notes.append("ran 2 epochs beside LN*/DN* at one thread, then resumed alone with two threads from "
                         "its epoch-2 checkpoint (results/cpu/README.md); evaluation times of the resumed run "
                         "were not recorded")
        dirs.append(_ptb(out, name, run, src=src, versions={"torch": run["torch"]},
                         device={"type": "cpu", "name": CPU_NAME, "threads": None, "cpus": 2}, date=CPU_DATE,
                         tag="cpu", tokens_per_s=cpu_summary[name]["tokens_per_s"], notes=notes))
    src = ROOT / "results/h100/ptb_results.json"
    s = json.loads(src.read_text())
    py = re.search(r"python (\S+)", s.get("env", ""))
    for name, run in s["runs"].items():
        dirs.append(_ptb(out, name, run, src=src, versions={"torch": run["torch"], "python": py and py.group(1)},
                         device={"type": "cuda", "name": run["card"], "threads": None}, date=H100_DATE, tag="h100",
                         tokens_per_s=s["summary"][name]["tokens_per_s"],
                         notes=["three PTB runs and four SR runs shared the card under a 291 s cap "
                                "(results/h100/README.md); test_ppl after each epoch with batch 20",
                                f"tokens_per_s from the source's summary ({s['summary'][name]['tokens_per_s']})"]))
    return dirs


def convert(out: Path) -> list:
    """Every committed result as run folders under ``out``; returns the folders."""
    return cifar(out) + sr(out) + ptb(out)


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="convert_results.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=cli.out_dir, default=str(ROOT / "results/records"), help="default results/records")
    p.add_argument("--check", action="store_true", help="compare a fresh conversion with --out; exit 1 if different")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = convert(Path(tmp))
            bad = [str(d.relative_to(tmp)) for d in fresh for f in d.iterdir()
                   if not (out / d.relative_to(tmp) / f.name).is_file()
                   or (out / d.relative_to(tmp) / f.name).read_bytes() != f.read_bytes()]
        print("\n".join(f"differs: {b}" for b in bad) or f"{out}: up to date ({len(fresh)} runs)")
        return 1 if bad else 0
    for sub in ("cifar", "sr", "ptb"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for d in convert(out):
        print(d.relative_to(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
