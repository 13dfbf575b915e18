"""Shared fixtures."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton's CPU interpreter for DivisiveNorm(impl="triton") (tests/test_triton.py). Set here, at import, so that it
    # holds whichever test imports triton first (torch.compile's Inductor may): the kernels read it when they are built.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on a shared 2-core machine this is much faster for the small RNN steps
    than two oversubscribed threads. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
