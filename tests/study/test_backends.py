"""Study stores on SQLite and on a real PostgreSQL server (started by the test): schema and migrations,
round trips, failures, concurrent writers losing nothing; the one-study-per-folder lock."""

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from qscale.errors import QscaleError
from qscale.study.backends import open_store, study_lock
from qscale.study.core import CellKey, Row, Table, columns
from qscale.study.store import migrations

T = Table("cells", columns("run:text P:int config_hash:text"), columns("qid:float arr:array meta:json note:text?"))
WRITER = Path(__file__).with_name("store_writer.py")
WTABLE = Table("w", columns("run:text worker:int i:int"), columns("value:float"))  # store_writer.py's table


@dataclass(frozen=True)
class CRow(Row):
    qid: float
    arr: np.ndarray
    meta: dict
    note: str | None = None


def _fresh_pg_database(url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    return url.replace("/postgres?", f"/{name}?")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A fresh database per test: a SQLite file, or a new database on the session's server."""
    if request.param == "sqlite":
        return str(tmp_path / "study.sqlite")
    return _fresh_pg_database(request.getfixturevalue("pg_url"), f"t_{abs(hash(request.node.name)) % 10**8}")


def test_round_trip_insert_or_ignore_and_schema_version(db):
    with open_store(db, [T]) as s:
        assert s.schema_version() == migrations()[-1][0] >= 1
        k = CellKey.make("cells", {"P": 4}, run="r", P=4)
        assert s.add(CRow(k, qid=0.25, arr=np.array([1.0, 2.5]), meta={"a": [1, 2]}))
        assert not s.add(CRow(k, qid=9.0, arr=np.array([0.0]), meta={}))  # stored cell left as it is
        s.add(CRow(CellKey.make("cells", {"P": 2}, run="r", P=2), qid=0.5, arr=np.zeros(0), meta={}, note="x"))
        rows = s.rows("cells")
        assert [r["P"] for r in rows] == [4, 2]  # insertion order
        assert rows[0]["qid"] == 0.25 and rows[0]["meta"] == {"a": [1, 2]} and rows[0]["note"] is None
        np.testing.assert_array_equal(rows[0]["arr"], [1.0, 2.5])
        assert s.has(k) and s.count("cells") == 2 and s.get(k)["config_hash"] == k.config_hash
        with pytest.raises(QscaleError, match="NaN"):
            s.add(CRow(CellKey.make("cells", run="r", P=8, config_hash="h"), qid=float("nan"), arr=[], meta={}))
        s.record_failure("cell:8", "cells P=8", "RuntimeError: boom", 3)
        s.record_failure("cell:8", "cells P=8", "RuntimeError: boom again", 3)
        assert [(f["task_id"], f["error"], f["attempts"]) for f in s.failures()] == [
            ("cell:8", "RuntimeError: boom again", 3)
        ]
        s.clear_failure("cell:8")
        assert s.failures() == []
    with open_store(db, [T]) as s:  # reopening applies nothing twice
        assert s.count("cells") == 2 and s.schema_version() == migrations()[-1][0]


def test_a_newer_schema_is_refused(db):
    with open_store(db, [T]) as s:
        s._exec("INSERT INTO schema_version VALUES (9999, 'future', 0)")
    with pytest.raises(QscaleError, match="schema version 9999, newer"):
        open_store(db, [T])


def test_two_processes_writing_at_once_lose_nothing(request, tmp_path):
    """Two writer processes race on the same cells of a SQLite file and of a PostgreSQL database (one pair of
    processes for both backends: starting Python with qscale costs seconds here)."""
    dbs = [str(tmp_path / "study.sqlite")]
    try:
        dbs.append(_fresh_pg_database(request.getfixturevalue("pg_url"), "t_writers"))
    except pytest.skip.Exception as e:
        print(f"PostgreSQL part skipped: {e}")
    n = 30
    start = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WRITER), str(w), str(n), str(start), *dbs],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (0, 1)
    ]
    deadline = time.monotonic() + 300
    while any(p.poll() is None for p in procs):  # a writer that fails leaves the other waiting: stop both
        if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            break
        time.sleep(0.05)
    outs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    new = [[int(x) for x in o[0].split()] for o in outs]
    for i, db in enumerate(dbs):
        with open_store(db) as s:
            s.create([WTABLE])
            rows = s.rows("w")
        assert len(rows) == len({(r["worker"], r["i"]) for r in rows}) == 3 * n, db  # own cells + shared, once each
        assert new[0][i] + new[1][i] == 3 * n, db  # every row was new to exactly one writer


def test_bad_store_urls_are_one_line_errors(tmp_path):
    with pytest.raises(QscaleError, match="unsupported store"):
        open_store("mysql://x/y")
    with pytest.raises(QscaleError, match=r"cannot open study store postgresql://u:\*\*\*@"):
        open_store(f"postgresql://u:secret@/nodb?host={tmp_path}&connect_timeout=2")


def test_second_study_on_the_same_folder_is_refused(tmp_path):
    busy = rf"another study is running in .* \(pid {os.getpid()}\)"
    # the second lock conflicts with the first as another process's would (flock locks an open file, not a pid)
    with study_lock(tmp_path), pytest.raises(QscaleError, match=busy), study_lock(tmp_path):
        pass
    with study_lock(tmp_path):  # released when the holder ends
        pass


def test_cli_refuses_a_second_study_and_bad_backends(tmp_path, capsys):
    from qscale.cli import main

    out = tmp_path / "study"
    with study_lock(out):
        assert main(["study", "qid", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("qscale: error: another study is running in")
    assert main(["study", "qid", "--preset", "tiny", "--out", str(out), "--executor", "spark"]) == 2
    assert "unknown executor 'spark'" in capsys.readouterr().err
    assert main(["study", "qat", "--preset", "tiny", "--out", str(out), "--db", "mysql://h/db"]) == 2
    assert "unsupported store" in capsys.readouterr().err
