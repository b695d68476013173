"""Suite-wide settings: one torch thread (tiny models are dominated by per-op overhead, and the
suite must be deterministic and fast on 2 cores)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
