"""Shared fixtures."""
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton's CPU interpreter for DivisiveNorm(impl="triton") (tests/test_triton.py). Set here, at import, so that it
    # holds whichever test imports triton first (torch.compile's Inductor may): the kernels read it when they are built.
    os.environ.setdefault("TRITON_INTERPRET", "1")

_HERE = Path(__file__).resolve().parent


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """impl="auto" compiles no windowed DN in these tests (dnlib.norms.windowed.compile_allowed), their fixtures and
    the processes they start (``DNLIB_COMPILE=0`` while a test of this folder sets up, runs and tears down): they take
    a few steps, and each spec's compile cost 2-40 s per process (the gpu_paper rehearsal 120 s with Inductor's cache
    cold, as on a fresh CI machine, against 84 s warm). The general path computes the same values; the compiled path
    has its own tests, which ask for it (``compiled_path``), as does one SR training run. A DNLIB_COMPILE of the
    caller's is kept; the notebooks that ``make test`` runs in the same pytest run take the path users get."""
    if (_HERE not in item.path.parents or "DNLIB_COMPILE" in os.environ
            or "compiled_path" in getattr(item, "fixturenames", ())):
        yield
        return
    os.environ["DNLIB_COMPILE"] = "0"
    try:
        yield
    finally:
        os.environ.pop("DNLIB_COMPILE", None)


@pytest.fixture
def compiled_path(monkeypatch):
    """impl="auto" compiles windowed DN on large CPU inputs, as it does for users (``DNLIB_COMPILE`` unset), also in
    the processes the test starts."""
    monkeypatch.delenv("DNLIB_COMPILE", raising=False)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on a shared 2-core machine this is much faster for the small RNN steps
    than two oversubscribed threads. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
