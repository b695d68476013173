"""Tiny token streams shared by the session: the cache lives in pytest's session base temp folder,
so the BPE is trained and the corpus tokenized once for all of the foundation's test folders."""

import pytest

from qscale.data import DataConfig, load_token_streams


@pytest.fixture(scope="session")
def data_cfg(tmp_path_factory):
    return DataConfig(max_files=40, vocab_size=512, cache_dir=tmp_path_factory.getbasetemp() / "qscale-cache")


@pytest.fixture(scope="session")
def streams(data_cfg):
    return load_token_streams(data_cfg, progress=False)
