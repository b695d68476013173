"""Shared helpers for the laws tests: the reference data folder and synthetic data from known laws."""

from pathlib import Path

import numpy as np
import pytest

from qscale.laws import get_law


def _data_dir() -> Path:
    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
    return (root / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = _data_dir()
    if not d.is_dir():
        pytest.skip(f"reference data folder {d} is absent (see shared/data/README.md)")
    return d


QID_TRUE = {"k": 0.017, "alpha": 0.2261, "beta": 0.5251, "gamma": 5.4967}


def _qid_data(seed: int, n: int, noise: float = 0.05) -> dict[str, np.ndarray]:
    """QiD points from the unified law with log-normal noise of ``noise`` (sigma of log)."""
    rng = np.random.default_rng(seed)
    N = 10 ** rng.uniform(7.5, 10, n)
    D = 10 ** rng.uniform(9, 12, n)
    P = rng.choice([2.0, 3.0, 4.0, 8.0], n)
    qid = get_law("qid").predict(QID_TRUE, {"N": N, "D": D, "P": P}) * np.exp(noise * rng.standard_normal(n))
    return {"N": N, "D": D, "P": P, "qid": qid}


@pytest.fixture(scope="session")
def qid_true() -> dict[str, float]:
    return dict(QID_TRUE)


@pytest.fixture(scope="session")
def qid_data():
    """Factory ``qid_data(seed, n, noise=0.05)`` of synthetic unified-law QiD data."""
    return _qid_data
