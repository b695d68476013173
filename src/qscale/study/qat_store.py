"""The QAT study's tables, in the same kind of SQLite file as the QiD study (``study.sqlite``).

Same conventions as :mod:`qscale.study.store`: one row per measured cell, a UNIQUE key per cell, every
row committed as soon as it is computed (``INSERT OR IGNORE``), WAL journaling, and the runner asks
``has_*`` before computing, so a killed study resumes without duplicates. Per-window held-out losses are
stored as float64 blobs so every δ can be re-paired with its reference on the same windows.

Tables:
  ``qat_fp``   full-precision model of one (N, D): held-out loss + smoothed final training loss;
  ``qat``      one QAT cell (N, D, scheme, G): δ = loss_q − loss_fp (columns N, D, G, delta for the laws engine);
  ``qat_attr`` per-layer input statistics (quantization MSE, kurtosis) of one trained model;
  ``qat_ptq``  QAT-vs-PTQ comparison: one row per (checkpoint, method, scheme), δs computed in the report.
"""

from __future__ import annotations

import time

import numpy as np

from qscale.errors import QscaleError
from qscale.study.qid_store import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS qat_fp (
    run TEXT NOT NULL, model TEXT NOT NULL, D INTEGER NOT NULL, seed INTEGER NOT NULL, config_hash TEXT NOT NULL,
    N INTEGER NOT NULL, N_total INTEGER NOT NULL, steps INTEGER NOT NULL,
    loss REAL NOT NULL, per_window BLOB NOT NULL, train_loss REAL NOT NULL,
    train_s REAL NOT NULL, eval_s REAL NOT NULL, created_at REAL NOT NULL,
    UNIQUE (run, model, D, seed, config_hash)
);
CREATE TABLE IF NOT EXISTS qat (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL, model TEXT NOT NULL, D INTEGER NOT NULL, scheme TEXT NOT NULL, G INTEGER NOT NULL,
    seed INTEGER NOT NULL, config_hash TEXT NOT NULL,
    N INTEGER NOT NULL, N_total INTEGER NOT NULL, steps INTEGER NOT NULL, w_bits INTEGER NOT NULL,
    a_bits INTEGER NOT NULL, G_eff INTEGER NOT NULL,
    loss_fp REAL NOT NULL, loss_q REAL NOT NULL, delta REAL NOT NULL, delta_se REAL NOT NULL,
    train_loss_fp REAL NOT NULL, train_loss_q REAL NOT NULL, delta_train REAL NOT NULL,
    per_window BLOB NOT NULL, eval_tokens INTEGER NOT NULL, versions TEXT NOT NULL,
    train_s REAL NOT NULL, eval_s REAL NOT NULL, created_at REAL NOT NULL,
    UNIQUE (run, model, D, scheme, G, seed, config_hash)
);
CREATE TABLE IF NOT EXISTS qat_attr (
    run TEXT NOT NULL, model TEXT NOT NULL, D INTEGER NOT NULL, scheme TEXT NOT NULL, G INTEGER NOT NULL,
    seed INTEGER NOT NULL, config_hash TEXT NOT NULL, layer TEXT NOT NULL,
    mse REAL NOT NULL, rel_mse REAL NOT NULL, kurtosis REAL NOT NULL, n INTEGER NOT NULL, created_at REAL NOT NULL,
    UNIQUE (run, model, D, scheme, G, seed, config_hash, layer)
);
CREATE TABLE IF NOT EXISTS qat_ptq (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL, model TEXT NOT NULL, D INTEGER NOT NULL, method TEXT NOT NULL, scheme TEXT NOT NULL,
    seed INTEGER NOT NULL, config_hash TEXT NOT NULL,
    N INTEGER NOT NULL, G INTEGER NOT NULL, steps INTEGER NOT NULL, loss REAL NOT NULL, per_window BLOB NOT NULL,
    train_loss REAL, seconds REAL NOT NULL, checkpoint TEXT NOT NULL, created_at REAL NOT NULL,
    UNIQUE (run, model, D, method, scheme, seed, config_hash)
);
"""

KEYS = {
    "qat_fp": ("run", "model", "D", "seed", "config_hash"),
    "qat": ("run", "model", "D", "scheme", "G", "seed", "config_hash"),
    "qat_attr": ("run", "model", "D", "scheme", "G", "seed", "config_hash"),
    "qat_ptq": ("run", "model", "D", "method", "scheme", "seed", "config_hash"),
}


def _blob(x) -> bytes:
    return np.asarray(x, dtype=np.float64).tobytes()


class QatStore(SqliteStore):
    """The QAT tables of one ``study.sqlite``; rows are plain dicts (``per_window`` as a float64 array)."""

    schema = SCHEMA

    def _check(self, table: str) -> None:
        if table not in KEYS:
            raise QscaleError(f"unknown QAT store table {table!r} (use {', '.join(KEYS)})")

    def has(self, table: str, key: dict) -> bool:
        """Whether the cell ``key`` (the table's UNIQUE columns) is stored (for ``qat_attr``: any layer)."""
        self._check(table)
        where = " AND ".join(f"{c}=?" for c in KEYS[table])
        return self._db.execute(f"SELECT 1 FROM {table} WHERE {where}", [key[c] for c in KEYS[table]]).fetchone() is not None

    def add(self, table: str, row: dict) -> bool:
        """Insert (and commit) one row; False (nothing changed) if its cell is already stored."""
        return self.add_many(table, [row]) == 1

    def add_many(self, table: str, rows: list[dict]) -> int:
        """Insert (and commit, in one transaction) several rows; returns how many were new."""
        self._check(table)
        n = 0
        with self._db:
            for row in rows:
                values = {**row, "created_at": time.time()}
                if "per_window" in values:
                    values["per_window"] = _blob(values["per_window"])
                cols = list(values)
                cur = self._db.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) "
                                       f"VALUES ({', '.join('?' * len(cols))})", [values[c] for c in cols])
                n += cur.rowcount
        return n

    def get(self, table: str, key: dict) -> dict | None:
        rows = self.rows(table, key)
        return rows[0] if rows else None

    def rows(self, table: str, where: dict | None = None) -> list[dict]:
        """Rows of ``table`` matching the equalities in ``where`` (all rows if None), in insertion order."""
        self._check(table)
        where = where or {}
        clause = (" WHERE " + " AND ".join(f"{c}=?" for c in where)) if where else ""
        out = []
        for r in self._db.execute(f"SELECT * FROM {table}{clause} ORDER BY rowid", list(where.values())).fetchall():
            d = dict(r)
            if "per_window" in d:
                d["per_window"] = np.frombuffer(d["per_window"], dtype=np.float64).copy()
            out.append(d)
        return out

    def count(self, table: str) -> int:
        self._check(table)
        return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
