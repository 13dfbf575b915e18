"""Shared fixtures."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton's CPU interpreter for DivisiveNorm(impl="triton") (tests/test_triton.py). Set here, at import, so that it
    # holds whichever test imports triton first (torch.compile's Inductor may): the kernels read it when they are built.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _share_the_cores() -> None:
    """Under pytest-xdist, give each worker its share of the cores: ``cores // workers`` intra-op threads, and the
    same ``OMP_NUM_THREADS`` for the processes it starts (CLI runs, kernels, scripts). Left alone, every worker and
    every child takes all the cores, and their OpenMP threads spin against each other: on the 2-core CI machine a
    CIFAR smoke test took 132 s beside another worker instead of 20 s alone. An ``OMP_NUM_THREADS`` set by the
    caller is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = int(os.environ.get("OMP_NUM_THREADS") or max(1, cores // workers))
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


_share_the_cores()


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on a shared 2-core machine this is much faster for the small RNN steps
    than two oversubscribed threads. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
