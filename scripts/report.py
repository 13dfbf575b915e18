"""Render a suite run's executed notebooks, and the results notebook 06, to HTML in one folder (``make report``).

    .venv/bin/python scripts/report.py                       # the newest finished runs/<profile>/suite-*/ ->
    <it>/report/ .venv/bin/python scripts/report.py --results runs/cifar/sweep   # 06 (and the report) read your run
    folders .venv/bin/python scripts/report.py --suite runs/smoke/suite-20261130T074129.757Z --out /tmp/report
    .venv/bin/python scripts/report.py --no-results          # without 06

Every executed notebook ``<suite>/<stem>/*.ipynb`` becomes ``<out>/<stem>.html`` (nbconvert's lab template, figures
embedded), and ``<out>/index.html`` links them with each notebook's title, status, time, parameters and headline
numbers (its ``results.json``). The folder works offline and can be copied as it is: MathJax is bundled
(``<out>/mathjax/``, from the jupyter-server-mathjax package) and no page loads a script from the web (an
interactive widget's output says that it is live in JupyterLab only).

Which suite run: the newest finished one (it has ``summary.json``, written when ``make run`` ends); newer
unfinished folders (a ``make run`` still writing, or one that was stopped) are skipped and named. A notebook that
cannot be read (half written) is listed as such, the others are rendered.

Which results 06 shows: by default the suite run's executed 06 (which reads the committed ``results/records``);
when the suite run has none, 06 is executed now. ``--results DIR`` (``make report RESULTS=DIR``): 06 is executed
now with ``results_dir=DIR``, so its tables, figures and the report are those of your run folders.
Exit 1 when there is no suite run, a notebook is unreadable or 06 fails (its HTML shows the error); 2 for a bad
argument.
"""
from __future__ import annotations

import argparse
import ast
import html
import json
import math
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS_NOTEBOOK = ROOT / "notebooks" / "06_results.ipynb"
#: MathJax 2's configuration in jupyter-server-mathjax (which has no CommonHTML output, nbconvert's default).
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"
MATHJAX_DIR = "mathjax"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("<p class=\"dnlib-widget\"><em>An interactive widget: it is live when the notebook runs in "
               "JupyterLab; this static page does not run Python.</em></p>")
#: nbconvert's lab template without what it would load from the web: require.js, the widget manager, mermaid.
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
#: Headline numbers shown on the index page per notebook (the rest are in its results.json).
HEADLINE_SHOWN = 8
#: Keys of results.json that are settings, not results.
_SETTINGS = {"seed", "step", "steps", "epoch", "epochs", "window", "space_window", "channel_window", "sigma", "alpha",
             "lr", "batch_size", "n", "scale", "n_images", "bins", "mi_bins", "seeds"}


class ReportError(Exception):
    """A bad argument or no suite run: one line, exit 2."""


# ------------------------------------------------------------------------------------------ which suite run
def _finished(suite: Path) -> bool:
    return (suite / "summary.json").is_file()


def newest_suite(runs: Path) -> tuple:
    """``(suite, skipped)``: the newest finished ``runs/<profile>/suite-<UTC time>`` folder (by its time stamp,
    over every profile; finished: it holds ``summary.json``, written when the suite run ends) and the newer
    unfinished ones that were passed over (a ``make run`` still writing one, or one that was stopped)."""
    found = sorted((p for p in runs.glob("*/suite-*") if p.is_dir()), key=lambda p: p.name, reverse=True)
    if not found:
        raise ReportError(f"{runs}: no suite run (runs/<profile>/suite-*/); run `make run` first")
    skipped = []
    for p in found:
        if _finished(p):
            return p, skipped
        skipped.append(p)
    raise ReportError(f"{runs}: no finished suite run (with summary.json); unfinished: "
                      f"{', '.join(str(p) for p in skipped)} (a `make run` still writing, or stopped)")


def executed(suite: Path) -> list:
    """The executed notebooks of a suite run: ``<suite>/<stem>/*.ipynb``, sorted."""
    return sorted(suite.glob("*/*.ipynb"))


# ------------------------------------------------------------------------------------------------ rendering
def _title(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def bundle_mathjax(out: Path) -> Path:
    """Copy MathJax (the jupyter-server-mathjax package's) into ``out/mathjax``; returns its ``MathJax.js``."""
    import jupyter_server_mathjax

    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    target = out / MATHJAX_DIR
    if not (target / "MathJax.js").is_file():
        shutil.copytree(src, target, dirs_exist_ok=True)
    return target / "MathJax.js"


def exporter():
    """An HTMLExporter (lab template) for offline pages: MathJax from ``mathjax/`` beside the page, no script
    from the web."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"dnlib_offline.html.j2": OFFLINE_TEMPLATE})],
                        template_file="dnlib_offline.html.j2",
                        mathjax_url=f"{MATHJAX_DIR}/MathJax.js?config={MATHJAX_CONFIG}")


def _static_widgets(nb) -> None:
    """Widget views (nothing without the widget manager a static page cannot load) become a note."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            if WIDGET_MIME in data:
                out["data"] = {"text/html": WIDGET_NOTE}
    nb.metadata.pop("widgets", None)


def render(path: Path, out: Path) -> tuple:
    """``(html file, title, notebook)`` of one executed notebook."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    _static_widgets(nb)
    body, _ = exporter().from_notebook_node(nb)
    target = out / f"{path.stem}.html"
    target.write_text(body, encoding="utf-8")
    return target, _title(nb) or path.stem, nb


# --------------------------------------------------------------------------- what the index says of a notebook
def parameters(nb) -> dict:
    """``{name: value source}`` a notebook ran with: its ``parameters`` cell, then the injected values."""
    out = {}
    for tag in ("parameters", "injected-parameters"):
        for cell in nb.cells:
            if cell.cell_type != "code" or tag not in cell.get("metadata", {}).get("tags", []):
                continue
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:
                continue
            for node in tree.body:
                target = node.target if isinstance(node, ast.AnnAssign) else (
                    node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
                if isinstance(target, ast.Name) and node.value is not None:
                    out[target.id] = ast.get_source_segment(cell.source, node.value)
    return out


def _numbers(value, path: str = ""):
    """``(path, number)`` of every number in a results.json value (list items named by their name/preset)."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in _SETTINGS:
                yield from _numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            tag = next((v[k] for k in ("name", "preset", "config", "label") if isinstance(v, dict) and k in v), i)
            yield from _numbers(v, f"{path}[{tag}]")


def headline(results_file) -> tuple:
    """``(the first HEADLINE_SHOWN numbers as "key value", how many there are)`` of a results.json."""
    if not results_file or not Path(results_file).is_file():
        return [], 0
    try:
        numbers = list(_numbers(json.loads(Path(results_file).read_text())))
    except (OSError, ValueError):
        return [], 0
    return [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers[:HEADLINE_SHOWN]], len(numbers)


def _seconds(v) -> str:
    return "" if v is None else f"{v:.1f}"


def _cell_list(items, more: str = "") -> str:
    if not items:
        return "<td>—</td>"
    return "<td><ul>" + "".join(f"<li><code>{html.escape(x)}</code></li>" for x in items) + "</ul>" + more + "</td>"


def index(out: Path, suite: Path, entries: list, notes: list = ()) -> Path:
    """``out/index.html``: one line per notebook (link, title, status, seconds, parameters, headline numbers)."""
    rows = []
    for e in entries:
        link = (f"<a href=\"{html.escape(e['html'])}\">{html.escape(e['stem'])}</a>" if e.get("html")
                else html.escape(e["stem"]))
        params = [f"{k} = {v}" for k, v in (e.get("parameters") or {}).items()]
        more = ""
        if e.get("n_numbers", 0) > len(e.get("headline") or []):
            more = (f"<small>{e['n_numbers'] - len(e['headline'])} more in "
                    f"<a href=\"{html.escape(e['results'])}\">results.json</a></small>" if e.get("results") else "")
        rows.append(f"<tr><td>{link}</td><td>{html.escape(e['title'])}</td>"
                    f"<td class=\"{html.escape(e['status'])}\">{html.escape(e['status'])}</td>"
                    f"<td>{_seconds(e['seconds'])}</td>{_cell_list(params)}{_cell_list(e.get('headline'), more)}"
                    f"<td>{html.escape(e['source'])}</td></tr>")
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note_html = "".join(f"<p class=\"note\">{html.escape(n)}</p>" for n in notes)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dnlib notebook report: {html.escape(suite.name)}</title>
<style>body{{font-family:sans-serif;max-width:80em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}}
ul{{margin:0;padding-left:1.1em}}li{{font-size:90%}}.ok{{color:#2a7a2a}}.failed,.unreadable{{color:#b22222}}
.note{{color:#555}}</style></head>
<body><h1>dnlib notebook report</h1>
<p>Suite run <code>{html.escape(str(suite))}</code> (profile <code>{html.escape(suite.parent.name)}</code>),
rendered {made}. Each page is a notebook as it was executed, outputs and figures included; the folder works
offline.</p>
{note_html}
<table><tr><th>notebook</th><th>title</th><th>status</th><th>seconds</th><th>parameters</th>
<th>headline numbers</th><th>executed</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _entry(nb_path: Path, out: Path, status: str, seconds, source: str, results_file=None) -> dict:
    """Render one notebook into an index entry; a notebook that cannot be read is an ``unreadable`` entry."""
    entry = {"stem": nb_path.stem, "status": status, "seconds": seconds, "source": source, "html": None,
             "title": "", "parameters": {}, "headline": [], "n_numbers": 0, "results": None}
    try:
        target, entry["title"], nb = render(nb_path, out)
    except Exception as exc:      # a half-written or foreign notebook: named, the others are still rendered
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        entry.update(status="unreadable", title=f"{nb_path}: {type(exc).__name__}: {first}"[:300])
        return entry
    entry["html"], entry["parameters"] = target.name, parameters(nb)
    entry["headline"], entry["n_numbers"] = headline(results_file)
    if results_file and Path(results_file).is_file():
        copy = out / f"{nb_path.stem}.results.json"
        shutil.copyfile(results_file, copy)
        entry["results"] = copy.name
    return entry


def report(suite: Path, out: Path, results: bool = True, profile: str | None = None,
           results_dir: Path | None = None, notes: list = ()) -> list:
    """Render every executed notebook of ``suite`` (and 06: executed now when absent, or with ``results_dir``)
    into ``out``; returns the index entries."""
    out.mkdir(parents=True, exist_ok=True)
    bundle_mathjax(out)
    summary_file = suite / "summary.json"
    try:
        summary = {Path(r["notebook"]).stem: r for r in json.loads(summary_file.read_text())} \
            if summary_file.is_file() else {}
    except (ValueError, KeyError, TypeError):
        summary = {}
    rerun_06 = results and results_dir is not None
    entries = []
    for nb in executed(suite):
        if rerun_06 and nb.stem == RESULTS_NOTEBOOK.stem:
            continue                          # executed again below, reading results_dir
        s = summary.get(nb.stem, {})
        entries.append(_entry(nb, out, s.get("status", "executed"), s.get("seconds"), "in the suite run",
                              nb.parent / "results.json"))
    if results and not any(e["stem"] == RESULTS_NOTEBOOK.stem for e in entries):
        from dnlib.notebook import parameters as P
        from dnlib.notebook import suite as S
        from dnlib.notebook.limits import default_cell_timeout

        profile = profile or (suite.parent.name if suite.parent.name in P.notebook_profiles(RESULTS_NOTEBOOK)
                              else "smoke")
        params = P.resolve_parameters(RESULTS_NOTEBOOK, profile,
                                      [] if results_dir is None else [("results_dir", str(results_dir))])
        rec = S.execute(RESULTS_NOTEBOOK, out / RESULTS_NOTEBOOK.stem / RESULTS_NOTEBOOK.name, params, profile,
                        progress=False, cell_timeout=default_cell_timeout(profile))
        source = f"now ({profile} profile" + ("" if results_dir is None else f", results_dir={results_dir}") + ")"
        entries.append(_entry(Path(rec.output), out, rec.status, rec.seconds, source, rec.results))
    index(out, suite, entries, notes)
    return entries


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=str(ROOT / "runs"), help="where suite runs are (default runs/)")
    p.add_argument("--suite", default=None, help="a suite run folder (default: the newest finished under --runs)")
    p.add_argument("--out", default=None, help="the report folder (default <suite>/report)")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="run folders for 06 and the report (a sweep's --out; default: the suite run's 06, which "
                        "reads the committed results/records)")
    p.add_argument("--no-results", action="store_true", help="do not add 06_results")
    args = p.parse_args(argv)
    notes = []
    try:
        if args.results is not None and args.no_results:
            raise ReportError("--results and --no-results: give one")
        results_dir = None
        if args.results is not None:
            results_dir = Path(args.results).resolve()
            if not results_dir.is_dir():
                raise ReportError(f"--results: {args.results} is not a folder (give a folder of run folders, e.g. a "
                                  "sweep's --out)")
            if not any(results_dir.rglob("record.json")):
                raise ReportError(f"--results: {args.results} holds no run folders (with record.json)")
        if args.suite:
            suite = Path(args.suite)
            if not suite.is_dir():
                raise ReportError(f"--suite: {suite} is not a folder")
            if not _finished(suite):
                notes.append("This suite run has no summary.json: it was stopped or is still running; "
                             "what it holds so far is shown.")
        else:
            suite, skipped = newest_suite(Path(args.runs))
            for s in skipped:
                msg = f"skipped {s}: unfinished (no summary.json: a `make run` still writing it, or stopped)"
                print(f"report: {msg}", file=sys.stderr)
                notes.append(msg[0].upper() + msg[1:] + ".")
    except ReportError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else suite / "report"
    if results_dir is not None:
        notes.append(f"06_results reads {results_dir} (--results), not the suite run's results.")
    entries = report(suite, out, results=not args.no_results, results_dir=results_dir, notes=notes)
    if not entries:
        print(f"report: error: {suite} holds no executed notebooks (<stem>/*.ipynb)", file=sys.stderr)
        return 1
    for e in entries:
        print(f"{e['stem']}: {e['status']}" + (f" -> {out / e['html']}" if e["html"] else f" ({e['title']})"))
    print(f"open {out / 'index.html'}")
    return 0 if all(e["status"] not in ("failed", "unreadable") for e in entries) else 1


if __name__ == "__main__":
    sys.modules.setdefault("rfc3987_syntax", None)   # 1 s of start-up this command never uses (scripts/nbclean.py)
    sys.exit(main())
