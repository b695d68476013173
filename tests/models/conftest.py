"""Tiny token streams shared by the session: the cache lives in pytest's session base temp folder,
so the BPE is trained and the corpus tokenized once for all of the foundation's test folders.
Torch runs on one thread in these tests: tiny matmuls gain nothing from two, and on a shared
machine OpenMP's spin-waiting makes two threads ~20x slower."""

import pytest
import torch

from qscale.data import DataConfig, load_token_streams


@pytest.fixture(scope="session")
def data_cfg(tmp_path_factory):
    return DataConfig(max_files=40, vocab_size=512, cache_dir=tmp_path_factory.getbasetemp() / "qscale-cache")


@pytest.fixture(scope="session")
def streams(data_cfg):
    return load_token_streams(data_cfg, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
