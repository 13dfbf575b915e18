"""Shared by ``tests/`` and nbval over ``notebooks/`` (``make test`` runs both in one pytest run; pytest loads the
rootdir's conftest for either alone too)."""
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


#: Worker seconds per test module or notebook in one ``make test`` (``pytest --durations=0``, 2026-12-07, Inductor's
#: cache cold as on a fresh CI machine). Only the order of the work uses them: pytest-xdist's loadscope hands a free
#: worker the next module in collection order, so the longest go first (longest processing time first) and the run
#: does not end with one long module on one worker while the other idles. xdist's own order (most tests first, which
#: ``--no-loadscope-reorder`` in the Makefile turns off) put test_browser.py (3 tests, 80 s) and test_scripts.py
#: (3 tests, 74 s) last. A module not named here counts 0.05 s per test. 03, 05 and 07: scaled by their ``make run``
#: times since their evaluation stopped compiling (03 44 -> 28 s, 05 26 -> 14 s, 07 43 -> 31 s).
SECONDS = {
    "test_experiment.py": 129, "test_sweep.py": 89, "test_compile.py": 81, "test_browser.py": 80, "test_scripts.py": 74,
    "test_campaign.py": 73, "test_suite.py": 56, "test_windowed.py": 51, "test_cifar.py": 49, "test_report.py": 47,
    "test_cli.py": 41, "test_stacked.py": 33, "test_resume.py": 33, "test_func.py": 28, "test_distributed.py": 27,
    "test_sr.py": 26, "test_triton.py": 25, "test_ptb.py": 21, "test_stacked_ptb.py": 20, "test_nbclean.py": 18,
    "test_export.py": 18, "test_kernel_shutdown.py": 14, "test_fields_weighted.py": 13, "test_vocabulary.py": 10,
    "test_data_cifar.py": 10, "test_figures_render.py": 10,
    "07_modern_networks.ipynb": 35, "03_cifar.ipynb": 27, "05_super_resolution.ipynb": 12,
    "04_language_model.ipynb": 15, "08_why_normalizers_work.ipynb": 12,
}


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist: each module's (notebook's) items stay together, in their order; modules longest first."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    count, first = {}, {}
    for i, item in enumerate(items):
        count[item.path] = count.get(item.path, 0) + 1
        first.setdefault(item.path, i)
    items.sort(key=lambda it: (-SECONDS.get(it.path.name, 0.05 * count[it.path]), first[it.path]))
