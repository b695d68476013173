"""The study store: round trip, unique key per cell, checkpoint losses stored once."""

import sqlite3

import numpy as np
import pytest

from qscale.errors import QscaleError
from qscale.study.qid_store import CellKey, CheckpointEval, QidRow, Store


def _row(D=1000, method="rtn", P=4, loss_q=3.5):
    key = CellKey("quick", "xs", D, method, P, 128, 0, "abc123")
    return QidRow(key, N=1000, N_total=5000, loss_fp=3.25, loss_q=loss_q, qid_se=0.01, eval_tokens=4096,
                  versions={"torch": "x"}, train_s=1.0, quantize_s=0.5, eval_s=0.25)


def test_round_trip_and_laws_column_names(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        assert store.add_qid(_row())
        (r,) = store.qid_rows()
    assert (r["N"], r["D"], r["P"], r["G"], r["method"], r["model"]) == (1000, 1000, 4, 128, "rtn", "xs")
    assert r["qid"] == pytest.approx(0.25)
    assert r["versions"] == {"torch": "x"}
    # another process (the laws loader) sees committed rows under the laws engine's column names
    con = sqlite3.connect(tmp_path / "s.sqlite")
    assert con.execute("SELECT N, D, P, G, qid FROM qid").fetchall() == [(1000, 1000, 4, 128, 0.25)]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unique_key_skips_duplicates(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        assert store.add_qid(_row())
        assert not store.add_qid(_row(loss_q=9.0))  # same cell: ignored, first value kept
        assert store.add_qid(_row(P=3))  # another cell
        assert store.has_qid(_row().key) and not store.has_qid(_row(P=2).key)
        assert store.count() == 2
        assert store.qid_rows([_row(P=3).key, _row(P=2).key, _row().key])[1]["loss_q"] == 3.5
    with Store(tmp_path / "s.sqlite") as store:  # re-opened: rows persist
        assert store.count() == 2


def test_checkpoint_losses_stored_once(tmp_path):
    ev = CheckpointEval("quick", "xs", 1000, 0, "h", 1000, 5000, 3.0, np.array([2.5, 3.5]), 64, 0.1, "/p")
    with Store(tmp_path / "s.sqlite") as store:
        assert store.get_checkpoint("quick", "xs", 1000, 0, "h") is None
        store.add_checkpoint(ev)
        store.add_checkpoint(ev)
        got = store.get_checkpoint("quick", "xs", 1000, 0, "h")
        assert store.count("checkpoints") == 1
        with pytest.raises(QscaleError):
            store.count("nope")
    np.testing.assert_array_equal(got.per_window, [2.5, 3.5])
    assert got.loss_fp == 3.0 and got.N == 1000


def test_corrupt_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(QscaleError, match="cannot open study store"):
        Store(bad)
