"""Render a suite run's executed notebooks, and the results notebook 06, to HTML in one folder (``make report``).

    .venv/bin/python scripts/report.py                       # the newest runs/<profile>/suite-*/ -> <it>/report/
    .venv/bin/python scripts/report.py --suite runs/smoke/suite-20261130T074129.757Z --out /tmp/report
    .venv/bin/python scripts/report.py --no-results          # without 06

Every executed notebook ``<suite>/<stem>/*.ipynb`` becomes ``<out>/<stem>.html`` (nbconvert's lab template, figures
embedded: the folder can be copied or mailed as it is), and ``<out>/index.html`` links them with each notebook's
title, status and time from the suite's ``summary.json``. When the suite run holds no executed
``06_results``, it is executed now (its profile's parameters, ``dnlib.suite.execute``) into ``<out>/06_results/``
and rendered too. Exit 1 when there is no suite run or 06 fails (its HTML shows the error).
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS_NOTEBOOK = ROOT / "notebooks" / "06_results.ipynb"


def newest_suite(runs: Path) -> Path:
    """The newest ``runs/<profile>/suite-<UTC time>`` folder (by its time stamp, over every profile)."""
    found = [p for p in runs.glob("*/suite-*") if p.is_dir()]
    if not found:
        raise FileNotFoundError(f"{runs}: no suite run (runs/<profile>/suite-*/); run `make run` first")
    return max(found, key=lambda p: p.name)


def executed(suite: Path) -> list:
    """The executed notebooks of a suite run: ``<suite>/<stem>/*.ipynb``, sorted."""
    return sorted(suite.glob("*/*.ipynb"))


def _title(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def render(path: Path, out: Path) -> tuple:
    """``(html file, title)`` of one executed notebook."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(path), as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    target = out / f"{path.stem}.html"
    target.write_text(body, encoding="utf-8")
    return target, _title(nb) or path.stem


def _seconds(v) -> str:
    return "" if v is None else f"{v:.1f}"


def index(out: Path, suite: Path, entries: list) -> Path:
    """``out/index.html``: one line per notebook (link, title, status, seconds)."""
    rows = "\n".join(
        f"<tr><td><a href=\"{html.escape(e['html'])}\">{html.escape(e['stem'])}</a></td>"
        f"<td>{html.escape(e['title'])}</td><td class=\"{html.escape(e['status'])}\">{html.escape(e['status'])}</td>"
        f"<td>{_seconds(e['seconds'])}</td>"
        f"<td>{html.escape(e['source'])}</td></tr>" for e in entries)
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dnlib notebook report: {html.escape(suite.name)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}
.ok{{color:#2a7a2a}}.failed{{color:#b22222}}</style></head>
<body><h1>dnlib notebook report</h1>
<p>Suite run <code>{html.escape(str(suite))}</code> (profile <code>{html.escape(suite.parent.name)}</code>),
rendered {made}. Each page is a notebook as it was executed, outputs and figures included.</p>
<table><tr><th>notebook</th><th>title</th><th>status</th><th>seconds</th><th>executed</th></tr>
{rows}
</table></body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def report(suite: Path, out: Path, results: bool = True, profile: str | None = None) -> list:
    """Render every executed notebook of ``suite`` (and 06, executed when absent) into ``out``; returns the
    index entries."""
    out.mkdir(parents=True, exist_ok=True)
    summary_file = suite / "summary.json"
    summary = {Path(r["notebook"]).stem: r for r in json.loads(summary_file.read_text())} \
        if summary_file.is_file() else {}
    entries = []
    for nb in executed(suite):
        target, title = render(nb, out)
        s = summary.get(nb.stem, {})
        entries.append({"stem": nb.stem, "html": target.name, "title": title, "status": s.get("status", "executed"),
                        "seconds": s.get("seconds"), "source": "in the suite run"})
    if results and not any(e["stem"] == RESULTS_NOTEBOOK.stem for e in entries):
        from dnlib import suite as S  # imports torch: only when 06 has to be executed

        profile = profile or (suite.parent.name if suite.parent.name in S.notebook_profiles(RESULTS_NOTEBOOK)
                              else "smoke")
        params = S.resolve_parameters(RESULTS_NOTEBOOK, profile)
        rec = S.execute(RESULTS_NOTEBOOK, out / RESULTS_NOTEBOOK.stem / RESULTS_NOTEBOOK.name, params, profile,
                        progress=False, cell_timeout=S.default_cell_timeout(profile))
        target, title = render(Path(rec.output), out)
        entries.append({"stem": RESULTS_NOTEBOOK.stem, "html": target.name, "title": title, "status": rec.status,
                        "seconds": rec.seconds, "source": f"now ({profile} profile)"})
    index(out, suite, entries)
    return entries


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=str(ROOT / "runs"), help="where suite runs are (default runs/)")
    p.add_argument("--suite", default=None, help="a suite run folder (default: the newest under --runs)")
    p.add_argument("--out", default=None, help="the report folder (default <suite>/report)")
    p.add_argument("--no-results", action="store_true", help="do not add 06_results when the suite lacks it")
    args = p.parse_args(argv)
    try:
        suite = Path(args.suite) if args.suite else newest_suite(Path(args.runs))
        if not suite.is_dir():
            raise FileNotFoundError(f"--suite: {suite} is not a folder")
    except FileNotFoundError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else suite / "report"
    entries = report(suite, out, results=not args.no_results)
    if not entries:
        print(f"report: error: {suite} holds no executed notebooks (<stem>/*.ipynb)", file=sys.stderr)
        return 1
    for e in entries:
        print(f"{e['stem']}: {e['status']} -> {out / e['html']}")
    print(f"open {out / 'index.html'}")
    return 0 if all(e["status"] != "failed" for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
