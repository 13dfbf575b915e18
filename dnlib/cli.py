"""What every ``python -m dnlib.*`` command shares: a bad argument is answered before any work starts with ONE
line on stderr, ``<prog>: error: <what>: <value> <what is allowed>``, and exit status 2.

* :class:`ArgumentParser` prints that one line (no usage block) for argparse's own errors too.
* The argument types (:func:`positive_int`, :func:`subset`, :func:`out_dir`, ...) reject bad values while the
  command line is parsed. The output-location types check that the location could be written (the nearest
  existing parent is a writable folder) and create nothing.
* :func:`user_errors` turns the library's own validation errors (``ValueError`` from configurations and specs,
  ``FileNotFoundError`` for data) raised while a command prepares its work into the same one line. It wraps
  only the preparation: an error raised during training is a bug, reported with its traceback.

This module imports nothing from dnlib (torch only to check ``--device``).
"""
from __future__ import annotations

import argparse
import math
import numbers
import os
import re
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ArgumentParser", "one_line", "user_errors", "positive_int", "nonnegative_int", "seed", "check_distinct",
           "number_in", "check_number",
           "positive_float", "nonnegative_float", "subset", "device", "out_dir", "out_file", "in_dir", "in_file",
           "USER_ERRORS"]

#: the exceptions that :func:`user_errors` reports as a bad command line
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def one_line(message) -> str:
    """``message`` on one line: its non-blank lines, stripped, joined by ``"; "`` (by a space after a colon)."""
    out = ""
    for line in str(message).splitlines():
        line = line.strip()
        if line:
            out = line if not out else out + (" " if out.endswith(":") else "; ") + line
    return out


class ArgumentParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors are one line, ``<prog>: error: <message>``, exit 2.

    Its sub-parsers are of the same class. A flag is spelled in full: no abbreviations (``--seed`` is not
    ``--seeds``; ``allow_abbrev=False``), so each flag has one spelling.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):  # noqa: D401 - argparse's signature
        message = one_line(message)
        if message.startswith("argument "):
            message = message[len("argument "):]
        self.exit(2, f"{self.prog}: error: {message}\n")


@contextmanager
def user_errors(parser: argparse.ArgumentParser, *extra: type):
    """Report the library's validation errors raised inside the block as ``parser.error`` (one line, exit 2).

    Wrap only what runs before the work starts (resolving configurations, loading data, checking inputs)."""
    try:
        yield
    except USER_ERRORS + tuple(extra) as e:
        parser.error(str(e) or type(e).__name__)


# ------------------------------------------------------------------------------------------------- numbers
def _int(value: str, what: str, low: int) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"{value} is not {what}")
    return v


def positive_int(value: str) -> int:
    """An integer >= 1."""
    return _int(value, "a positive integer", 1)


def nonnegative_int(value: str) -> int:
    """An integer >= 0."""
    return _int(value, "an integer >= 0", 0)


def seed(value: str) -> int:
    """A seed: an integer in [0, 2**63)."""
    v = _int(value, "a seed (an integer >= 0)", 0)
    if v >= 2**63:
        raise argparse.ArgumentTypeError(f"{value} is not a seed (an integer below 2**63)")
    return v


def _float(value: str, what: str, ok) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
    if not math.isfinite(v) or not ok(v):
        raise argparse.ArgumentTypeError(f"{value} is not {what}")
    return v


def positive_float(value: str) -> float:
    """A finite number > 0."""
    return _float(value, "a finite number > 0", lambda v: v > 0)


def nonnegative_float(value: str) -> float:
    """A finite number >= 0."""
    return _float(value, "a finite number >= 0", lambda v: v >= 0)


def subset(value: str):
    """A class-stratified subset: ``"N"`` -> N, or ``"N_TRAIN,N_EVAL"`` -> (N_TRAIN, N_EVAL); positive integers."""
    parts = value.split(",")
    what = "a subset: N or N_TRAIN,N_EVAL with positive integers"
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
    if any(n < 1 for n in nums):
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}")
    return nums[0] if len(nums) == 1 else tuple(nums)


def device(value: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (nothing else: torch parses ``mps``, ``xpu``, ``meta``... but dnlib
    runs on none of them), and CUDA only where it is available."""
    import torch
    if value in ("auto", "cpu"):
        return value
    if not re.fullmatch(r"cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device dnlib runs on; use auto, cpu, cuda or cuda:N")
    dev = torch.device(value)
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{value}: CUDA is not available here")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{value}: there are {torch.cuda.device_count()} CUDA devices")
    return value


def number_in(value, ok, integer: bool = False) -> bool:
    """Whether ``value`` is a finite real number (an integer when ``integer``; never a bool) for which ``ok`` holds."""
    kind = numbers.Integral if integer else numbers.Real
    return not isinstance(value, bool) and isinstance(value, kind) and math.isfinite(value) and ok(value)


def check_number(name: str, value, ok, allowed: str, *, integer: bool = False, none_ok: bool = False) -> None:
    """Raise ValueError ``<name>: must be <allowed>, got <value>`` unless :func:`number_in` (or None, ``none_ok``):
    the check of a configuration's numeric fields where it is built."""
    if not (value is None and none_ok) and not number_in(value, ok, integer):
        raise ValueError(f"{name}: must be {allowed}, got {value!r}")


def check_distinct(name: str, values) -> None:
    """Raise ValueError ``<name>: <value> twice (each once)`` when ``values`` holds one more than once."""
    values = list(values)
    twice = [v for i, v in enumerate(values) if v in values[:i]]
    if twice:
        raise ValueError(f"{name}: {twice[0]} twice in {' '.join(map(str, values))} (each once)")


# ------------------------------------------------------------------------------------------------ locations
def _creatable(path: Path, value: str) -> None:
    """The nearest existing parent of ``path`` must be a writable folder (nothing is created)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {value}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot create {value}: {parent} is not writable")


def out_dir(value: str) -> str:
    """An output folder: an existing writable folder, or one that can be created (nothing is created here)."""
    if not value:
        raise argparse.ArgumentTypeError("an empty path is not an output folder")
    path = Path(value)
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{value} exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"{value} is not writable")
    else:
        _creatable(path, value)
    return value


def out_file(value: str) -> str:
    """An output file: an existing writable file, or one that can be created (nothing is created here)."""
    if not value:
        raise argparse.ArgumentTypeError("an empty path is not an output file")
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder, not a file")
    if path.exists():
        if not os.access(path.parent, os.W_OK | os.X_OK):  # the atomic write replaces the file from its folder
            raise argparse.ArgumentTypeError(f"{value}: its folder is not writable")
    else:
        _creatable(path, value)
    return value


def in_dir(value: str) -> str:
    """An existing folder."""
    path = Path(value)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{value} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is not a folder")
    return value


def in_file(value: str) -> str:
    """An existing, readable file."""
    path = Path(value)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{value} does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{value} is not readable")
    return value
