"""The QiD study store (being moved onto the study core: qscale.study.store): one SQLite file, one row per measured cell.

Tables: ``qid`` (one row per quantized cell), ``checkpoints`` (full-precision loss and per-window
losses of each checkpoint, measured once), ``train_time`` (seconds spent training each model size).

A study that is killed at any point loses at most the cell it was computing: every row is its own
transaction, and the runner asks :meth:`Store.has_qid` before computing a cell, so a re-run resumes.
WAL journaling lets a reader (the laws engine, a notebook) open the file while a study writes to it.

Column names follow the laws engine's defaults (``N``, ``D``, ``P``, ``G``, ``qid``), so
``qscale.laws.load_table("study.sqlite", table="qid")`` reads the table as it is.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from qscale.errors import QscaleError

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    run         TEXT    NOT NULL,
    model       TEXT    NOT NULL,
    D           INTEGER NOT NULL,
    seed        INTEGER NOT NULL,
    eval_hash   TEXT    NOT NULL,
    N           INTEGER NOT NULL,
    N_total     INTEGER NOT NULL,
    loss_fp     REAL    NOT NULL,
    per_window  BLOB    NOT NULL,
    eval_tokens INTEGER NOT NULL,
    eval_s      REAL    NOT NULL,
    path        TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    UNIQUE (run, model, D, seed, eval_hash)
);
CREATE TABLE IF NOT EXISTS train_time (
    run         TEXT    NOT NULL,
    model       TEXT    NOT NULL,
    seed        INTEGER NOT NULL,
    seconds     REAL    NOT NULL,
    UNIQUE (run, model, seed)
);
CREATE TABLE IF NOT EXISTS qid (
    id          INTEGER PRIMARY KEY,
    run         TEXT    NOT NULL,
    model       TEXT    NOT NULL,
    N           INTEGER NOT NULL,
    N_total     INTEGER NOT NULL,
    D           INTEGER NOT NULL,
    method      TEXT    NOT NULL,
    P           INTEGER NOT NULL,
    G           INTEGER NOT NULL,
    seed        INTEGER NOT NULL,
    config_hash TEXT    NOT NULL,
    loss_fp     REAL    NOT NULL,
    loss_q      REAL    NOT NULL,
    qid         REAL    NOT NULL,
    qid_se      REAL    NOT NULL,
    eval_tokens INTEGER NOT NULL,
    versions    TEXT    NOT NULL,
    train_s     REAL    NOT NULL,
    quantize_s  REAL    NOT NULL,
    eval_s      REAL    NOT NULL,
    created_at  REAL    NOT NULL,
    UNIQUE (run, model, D, method, P, G, seed, config_hash)
);
"""


@dataclass(frozen=True)
class CellKey:
    """What identifies one QiD measurement; the UNIQUE key of the ``qid`` table.

    ``G`` is the group size in input columns; ``0`` stands for per-output-channel scales.
    """

    run: str
    model: str
    D: int
    method: str
    P: int
    G: int
    seed: int
    config_hash: str


@dataclass(frozen=True)
class CheckpointEval:
    """Full-precision loss of one checkpoint on the study's fixed held-out windows (stored once)."""

    run: str
    model: str
    D: int
    seed: int
    eval_hash: str
    N: int
    N_total: int
    loss_fp: float
    per_window: np.ndarray
    eval_tokens: int
    eval_s: float
    path: str


@dataclass(frozen=True)
class QidRow:
    """One quantized checkpoint: QiD = loss_q - loss_fp (Ouyang et al. 2024, SPEC §1) and its paired SE."""

    key: CellKey
    N: int
    N_total: int
    loss_fp: float
    loss_q: float
    qid_se: float
    eval_tokens: int
    versions: dict
    train_s: float
    quantize_s: float
    eval_s: float

    @property
    def qid(self) -> float:
        return self.loss_q - self.loss_fp


_KEY_COLUMNS = tuple(f.name for f in fields(CellKey))


class SqliteStore:
    """One ``study.sqlite`` file (WAL mode) with the tables of ``schema`` created if missing.

    Subclasses declare ``schema`` and hold the queries; several stores may share one file.
    """

    schema: str = ""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(self.schema)
        except sqlite3.DatabaseError as e:
            raise QscaleError(f"cannot open study store {self.path}: {e}") from e
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Store(SqliteStore):
    """SQLite store of a study (``checkpoints`` and ``qid`` tables); safe to re-open and resume."""

    schema = SCHEMA

    # ---- checkpoints ----
    def get_checkpoint(self, run: str, model: str, D: int, seed: int, eval_hash: str) -> CheckpointEval | None:
        """The stored full-precision evaluation of a checkpoint, or None if not yet measured."""
        r = self._db.execute(
            "SELECT * FROM checkpoints WHERE run=? AND model=? AND D=? AND seed=? AND eval_hash=?",
            (run, model, D, seed, eval_hash),
        ).fetchone()
        if r is None:
            return None
        values = {k: r[k] for k in r.keys() if k != "created_at"}
        values["per_window"] = np.frombuffer(r["per_window"], dtype=np.float64).copy()
        return CheckpointEval(**values)

    def add_checkpoint(self, ev: CheckpointEval) -> None:
        """Insert (and commit) a checkpoint's full-precision evaluation; an existing one is kept."""
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO checkpoints (run, model, D, seed, eval_hash, N, N_total, loss_fp, per_window,"
                " eval_tokens, eval_s, path, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (ev.run, ev.model, int(ev.D), int(ev.seed), ev.eval_hash, int(ev.N), int(ev.N_total),
                 float(ev.loss_fp), np.asarray(ev.per_window, dtype=np.float64).tobytes(), int(ev.eval_tokens),
                 float(ev.eval_s), ev.path, time.time()),
            )

    # ---- training time (summed over resumed runs) ----
    def add_train_seconds(self, run: str, model: str, seed: int, seconds: float) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO train_time (run, model, seed, seconds) VALUES (?,?,?,?) "
                "ON CONFLICT (run, model, seed) DO UPDATE SET seconds = seconds + excluded.seconds",
                (run, model, int(seed), float(seconds)),
            )

    def train_seconds(self, run: str, model: str, seed: int) -> float:
        r = self._db.execute("SELECT seconds FROM train_time WHERE run=? AND model=? AND seed=?",
                             (run, model, int(seed))).fetchone()
        return float(r[0]) if r else 0.0

    # ---- qid rows ----
    def has_qid(self, key: CellKey) -> bool:
        where = " AND ".join(f"{c}=?" for c in _KEY_COLUMNS)
        return self._db.execute(f"SELECT 1 FROM qid WHERE {where}", _key_values(key)).fetchone() is not None

    def add_qid(self, row: QidRow) -> bool:
        """Insert (and commit) one row; returns False (and changes nothing) if the cell is already stored."""
        cols = (*_KEY_COLUMNS, "N", "N_total", "loss_fp", "loss_q", "qid", "qid_se", "eval_tokens", "versions",
                "train_s", "quantize_s", "eval_s", "created_at")
        values = (*_key_values(row.key), int(row.N), int(row.N_total), float(row.loss_fp), float(row.loss_q),
                  float(row.qid), float(row.qid_se), int(row.eval_tokens), json.dumps(row.versions, sort_keys=True),
                  float(row.train_s), float(row.quantize_s), float(row.eval_s), time.time())
        with self._db:
            cur = self._db.execute(
                f"INSERT OR IGNORE INTO qid ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values
            )
        return cur.rowcount == 1

    def qid_rows(self, keys: list[CellKey] | None = None) -> list[dict]:
        """Rows as dicts (``versions`` parsed), all of them or those of ``keys`` in that order (missing skipped)."""
        if keys is None:
            rows = self._db.execute("SELECT * FROM qid ORDER BY id").fetchall()
        else:
            where = " AND ".join(f"{c}=?" for c in _KEY_COLUMNS)
            rows = [r for k in keys if (r := self._db.execute(f"SELECT * FROM qid WHERE {where}",
                                                               _key_values(k)).fetchone()) is not None]
        out = []
        for r in rows:
            d = dict(r)
            d["versions"] = json.loads(d["versions"])
            out.append(d)
        return out

    def count(self, table: str = "qid") -> int:
        if table not in ("qid", "checkpoints", "train_time"):
            raise QscaleError(f"unknown store table {table!r} (use 'qid', 'checkpoints' or 'train_time')")
        return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _key_values(key: CellKey) -> tuple:
    return tuple(getattr(key, c) for c in _KEY_COLUMNS)
