"""Progress of long work (training, the notebook suite): one tqdm bar shown as the context wants it (a widget in
JupyterLab, a bar on a terminal, periodic lines in a log, a text bar redrawn every few seconds under the notebook
runner, ``DNLIB_PROGRESS``)."""
from __future__ import annotations

import os
import sys

from tqdm import tqdm

__all__ = ["PROGRESS_ENV", "PROGRESS_MODES", "PROGRESS_INTERVAL", "progress_mode", "progress_bar"]

#: How :func:`progress_bar` shows progress: ``auto`` (default), ``widget``, ``text``, ``lines`` or ``off``.
PROGRESS_ENV = "DNLIB_PROGRESS"
PROGRESS_MODES = ("auto", "widget", "text", "lines", "off")
#: Seconds between two redraws of a ``text`` bar (the notebook runner's) and between two ``lines``.
PROGRESS_INTERVAL = {"text": 10.0, "lines": 30.0}


class _Lines:
    """A file for tqdm that turns each redraw (``"\\r" + bar``) into one line (for logs: no carriage returns)."""

    def __init__(self, file):
        self.file = file

    def write(self, text: str) -> None:
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip():
                self.file.write(line.rstrip() + "\n")

    def flush(self) -> None:
        self.file.flush()


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, papermill), whatever the frontend."""
    return "ipykernel.zmqshell" in sys.modules and "IPython" in sys.modules and \
        type(sys.modules["IPython"].get_ipython()).__name__ == "ZMQInteractiveShell"


def progress_mode(mode: str | None = None) -> str:
    """The mode :func:`progress_bar` uses: ``mode``, else ``$DNLIB_PROGRESS``, else ``auto`` resolved: ``widget``
    in a Jupyter kernel (with ipywidgets), ``text`` when stderr is a terminal, ``lines`` otherwise."""
    mode = mode or os.environ.get(PROGRESS_ENV) or "auto"
    if mode not in PROGRESS_MODES:
        raise ValueError(f"{PROGRESS_ENV}: got {mode!r}; allowed values are {list(PROGRESS_MODES)}")
    if mode == "auto":
        if _in_kernel():
            try:
                import ipywidgets  # noqa: F401
                return "widget"
            except ImportError:
                return "text"
        return "text" if getattr(sys.stderr, "isatty", lambda: False)() else "lines"
    return mode


def progress_bar(total: int, *, initial: int = 0, desc: str = "train", enabled: bool = True,
                 mode: str | None = None) -> tqdm:
    """A tqdm bar over ``total`` steps, shown as :func:`progress_mode` says (``enabled=False`` or mode ``off``:
    a disabled bar, same methods).

    * ``widget``: ``tqdm.notebook`` (JupyterLab);
    * ``text``: a text bar on stderr; outside a terminal (papermill, whose executed copy keeps the last redraw once
      the runner merges the carriage returns) it is redrawn every ``PROGRESS_INTERVAL["text"]`` seconds;
    * ``lines``: one line on stderr every ``PROGRESS_INTERVAL["lines"]`` seconds and at the end (logs, ``--progress``
      without a terminal).

    The bar stays when closed (its last state: how far the run got)."""
    mode = progress_mode(mode) if enabled else "off"
    kw = dict(total=total, initial=initial, desc=desc, leave=True, disable=mode == "off")
    if mode == "widget":
        from tqdm.notebook import tqdm as notebook_tqdm
        return notebook_tqdm(**kw)
    if mode == "lines":
        every = PROGRESS_INTERVAL["lines"]
        return tqdm(**kw, file=_Lines(sys.stderr), mininterval=every, maxinterval=every, ascii=True)
    if mode == "text" and not getattr(sys.stderr, "isatty", lambda: False)():
        every = PROGRESS_INTERVAL["text"]
        return tqdm(**kw, file=sys.stderr, mininterval=every, maxinterval=every, ascii=True)  # full width
    try:                                    # a terminal that says it is 0 x 0 (a fresh pty): tqdm would draw nothing
        size = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        size = None
    shape = {} if size and size.columns and size.lines else {"ncols": 100, "nrows": 20}
    return tqdm(**kw, file=sys.stderr, **shape)
