"""Suite-wide fixtures.

One torch thread: tiny models are dominated by per-op overhead, and intra-op threads only add
contention on a busy 2-core machine. Tiny token streams shared by the session: the cache lives in
pytest's session base temp folder, so the BPE is trained and the corpus tokenized once.
Triton kernels (extra ``gpu``) run through Triton's CPU interpreter: the variable must be set before anything
imports triton (torch does), so here (``TRITON_INTERPRET=0`` in the environment runs them compiled on a GPU).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from qscale.data import DataConfig, load_token_streams


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def data_cfg(tmp_path_factory):
    return DataConfig(max_files=40, vocab_size=512, cache_dir=tmp_path_factory.getbasetemp() / "qscale-cache")


@pytest.fixture(scope="session")
def streams(data_cfg):
    return load_token_streams(data_cfg, progress=False)
