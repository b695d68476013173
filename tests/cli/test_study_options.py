"""Study flags: ``--executor ray`` follows ``ray.init()`` (join this host's cluster, else start a local one)."""

import types

import pytest

from qscale.cli.study_options import ADDRESS_OPTION
from qscale.study import ray_executor
from qscale.study.backends import make_executor


@pytest.fixture
def fake_ray(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray_executor, "ray", fake)
    return calls


@pytest.mark.parametrize(
    "address, expected", [(None, None), ("local", None), ("auto", "auto"), ("10.0.0.1:6379", "10.0.0.1:6379")]
)
def test_ray_address(fake_ray, address, expected):
    executor = make_executor("ray", address)
    executor._connect()
    assert fake_ray == [{"address": expected, "log_to_driver": False}]


def test_the_flag_defaults_to_ray_init_convention():
    assert ADDRESS_OPTION.default is None
