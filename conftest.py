"""Shared by both pytest runs of ``make test`` (``tests/`` and nbval over ``notebooks/``): pytest loads the
rootdir's conftest for either."""
import os

import torch


def _share_the_cores() -> None:
    """Under pytest-xdist, give each worker its share of the cores: ``cores // workers`` intra-op threads, and the
    same ``OMP_NUM_THREADS`` for the processes it starts (CLI runs, scripts, nbval's notebook kernels). Left alone,
    every worker and every child takes all the cores, and their OpenMP threads spin against each other: on the
    2-core CI machine a CIFAR smoke test took 132 s beside another worker instead of 20 s alone, and nbval 156 s
    instead of 87 s. An ``OMP_NUM_THREADS`` set by the caller is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = int(os.environ.get("OMP_NUM_THREADS") or max(1, cores // workers))
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


_share_the_cores()
