"""Shared fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on a shared 2-core machine this is much faster for the small RNN steps
    than two oversubscribed threads. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
