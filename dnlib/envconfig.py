"""Quiet, non-interactive Jupyter settings for the project's virtual environment.

``python -m dnlib.envconfig`` writes two files under the environment's prefix (``sys.prefix``
unless ``--prefix`` is given); running it again changes nothing (idempotent):

* ``etc/ipython/ipython_kernel_config.py`` gets ``c.IPKernelApp.log_level = "ERROR"``, which silences
  ipykernel's "Kernel is running over TCP without encryption" warning printed on every papermill/nbval run.
  Other lines already in the file are kept.
* ``share/jupyter/lab/settings/overrides.json`` turns off JupyterLab's news and update-check notifications
  (the popup that covers the lower right corner in the browser test). Other keys already in the file are kept.

Only files inside the environment are touched, never the user's home directory.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KERNEL_CONFIG = Path("etc", "ipython", "ipython_kernel_config.py")
LAB_OVERRIDES = Path("share", "jupyter", "lab", "settings", "overrides.json")
KERNEL_LINE = 'c.IPKernelApp.log_level = "ERROR"'
KERNEL_BLOCK = f"# dnlib.envconfig: silence ipykernel's per-run TCP warning\n{KERNEL_LINE}\n"
NOTIFICATION_KEY = "@jupyterlab/apputils-extension:notification"
NOTIFICATION_SETTINGS = {"fetchNews": "false", "checkForUpdates": False}


def write_kernel_config(prefix: Path) -> bool:
    """Add the log-level line to the kernel config; return True when the file changed."""
    path = Path(prefix) / KERNEL_CONFIG
    text = path.read_text() if path.exists() else ""
    if KERNEL_LINE in text.splitlines():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    sep = "" if not text or text.endswith("\n") else "\n"
    path.write_text(text + sep + KERNEL_BLOCK)
    return True


def write_lab_overrides(prefix: Path) -> bool:
    """Merge the notification settings into overrides.json; return True when the file changed."""
    path = Path(prefix) / LAB_OVERRIDES
    current = json.loads(path.read_text() or "{}") if path.exists() else {}
    merged = dict(current)
    merged[NOTIFICATION_KEY] = {**current.get(NOTIFICATION_KEY, {}), **NOTIFICATION_SETTINGS}
    if merged == current:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return True


def configure(prefix: str | Path | None = None) -> list[Path]:
    """Write both files under ``prefix`` (default ``sys.prefix``); return the paths that changed."""
    prefix = Path(prefix if prefix is not None else sys.prefix)
    changed = []
    if write_kernel_config(prefix):
        changed.append(prefix / KERNEL_CONFIG)
    if write_lab_overrides(prefix):
        changed.append(prefix / LAB_OVERRIDES)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dnlib.envconfig", description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default=None, help="environment prefix (default: sys.prefix)")
    args = parser.parse_args(argv)
    changed = configure(args.prefix)
    for path in changed:
        print(f"dnlib.envconfig: wrote {path}")
    if not changed:
        print("dnlib.envconfig: already configured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
