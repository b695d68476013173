"""The QiD tables on the SQLite store: the laws engine's column names, one row per cell, re-opened rows persist."""

import sqlite3

import numpy as np
import pytest

from qscale.study.core import CellKey
from qscale.study.qid_cells import TABLES, FpRow, QidRow
from qscale.study.store import SqliteStore


def _row(D=1000, method="rtn", P=4, loss_q=3.5):
    key = CellKey.make("qid", run="quick", model="xs", D=D, method=method, P=P, G=128, seed=0, config_hash="abc123")
    return QidRow(
        key,
        N=1000,
        N_total=5000,
        loss_fp=3.25,
        loss_q=loss_q,
        qid_se=0.01,
        eval_tokens=4096,
        versions={"torch": "x"},
        train_s=1.0,
        quantize_s=0.5,
        eval_s=0.25,
    )


def test_round_trip_and_laws_column_names(tmp_path):
    with SqliteStore(tmp_path / "s.sqlite", TABLES) as store:
        assert store.add(_row())
        (r,) = store.rows("qid")
    assert (r["N"], r["D"], r["P"], r["G"], r["method"], r["model"]) == (1000, 1000, 4, 128, "rtn", "xs")
    assert r["qid"] == pytest.approx(0.25) and r["versions"] == {"torch": "x"}
    # another process (the laws loader) sees committed rows under the laws engine's column names
    con = sqlite3.connect(tmp_path / "s.sqlite")
    assert con.execute("SELECT N, D, P, G, qid FROM qid").fetchall() == [(1000, 1000, 4, 128, 0.25)]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unique_key_skips_duplicates_and_rows_persist(tmp_path):
    with SqliteStore(tmp_path / "s.sqlite", TABLES) as store:
        assert store.add(_row())
        assert not store.add(_row(loss_q=9.0))  # same cell: ignored, first value kept
        assert store.add(_row(P=3))
        assert store.has(_row().key) and not store.has(_row(P=2).key)
        assert store.get(_row().key)["loss_q"] == 3.5 and store.get(_row(P=2).key) is None
    with SqliteStore(tmp_path / "s.sqlite", TABLES) as store:
        assert store.count("qid") == 2


def test_checkpoint_losses_round_trip(tmp_path):
    key = CellKey.make("qid_fp", {"eval": "h"}, run="quick", model="xs", D=1000, seed=0)
    ev = FpRow(
        key, N=1000, N_total=5000, loss_fp=3.0, per_window=np.array([2.5, 3.5]), eval_tokens=64, eval_s=0.1, path="/p"
    )
    with SqliteStore(tmp_path / "s.sqlite", TABLES) as store:
        assert store.add(ev) and not store.add(ev)
        got = store.get(key)
    np.testing.assert_array_equal(got["per_window"], [2.5, 3.5])
    assert got["loss_fp"] == 3.0 and got["N"] == 1000
