"""Study stores: the :class:`~qscale.study.core.Store` interface and its SQLite implementation.

One ``study.sqlite`` file holds every table of a study. Each row is its own committed transaction
(``INSERT OR IGNORE`` on the table's UNIQUE cell key), so a study killed at any point loses at most the
cell it was computing and a re-run skips what is stored. WAL journaling lets a reader (the laws engine,
a notebook) open the file while a study writes to it. Column names follow the laws engine's defaults
(``N``, ``D``, ``P``, ``G``, ``qid``, ``delta``), so ``qscale.laws.load_table("study.sqlite", table="qid")``
reads a table as it is. Another backend (PostgreSQL) is one more :class:`Store` class and a line in
:func:`open_store`.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qscale.errors import QscaleError
from qscale.study.core import CellKey, Column, Row, Store, Table

SQL_TYPES = {"int": "INTEGER", "float": "REAL", "text": "TEXT", "json": "TEXT", "array": "BLOB"}

__all__ = ["SqliteStore", "Store", "decode", "encode", "open_store", "row_values"]


def encode(col: Column, value: Any, table: str) -> Any:
    """A Python value as stored: ints, finite floats, text, JSON text, float64 bytes; None only if nullable."""
    if value is None:
        if not col.nullable:
            raise QscaleError(f"table {table}: column {col.name} is missing")
        return None
    if col.type == "int":
        return int(value)
    if col.type == "float":
        v = float(value)
        if not math.isfinite(v):
            raise QscaleError(f"table {table}: column {col.name} is {v} (NaN/inf is an error, not a number)")
        return v
    if col.type == "text":
        return str(value)
    if col.type == "json":
        return json.dumps(value, sort_keys=True)
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise QscaleError(f"table {table}: column {col.name} must be a finite 1-D array")
    return arr.tobytes()


def decode(col: Column | None, value: Any) -> Any:
    if value is None or col is None:
        return value
    if col.type == "json":
        return json.loads(value)
    if col.type == "array":
        return np.frombuffer(value, dtype=np.float64).copy()
    return value


def row_values(table: Table, row: Row) -> dict[str, Any]:
    """Key and value columns of ``row`` checked against ``table`` (no column missing, none unknown)."""
    values = {**row.key.as_dict(), **row.record()}
    unknown = set(values) - {c.name for c in table.columns}
    if unknown:
        raise QscaleError(f"table {table.name}: unknown column(s) {', '.join(sorted(unknown))}")
    return {c.name: encode(c, values.get(c.name), table.name) for c in table.columns}


class SqliteStore(Store):
    """One SQLite file (WAL mode); tables created on :meth:`create` (also from ``tables`` at open)."""

    def __init__(self, path: str | Path, tables: Sequence[Table] = ()):
        self.path = Path(path)
        self._tables: dict[str, Table] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
        except (sqlite3.DatabaseError, OSError) as e:
            raise QscaleError(f"cannot open study store {self.path}: {e}") from e
        self._db.row_factory = sqlite3.Row
        self.create(tables)

    def create(self, tables: Sequence[Table]) -> None:
        for t in tables:
            cols = [f"{c.name} {SQL_TYPES[c.type]}{'' if c.nullable else ' NOT NULL'}" for c in t.columns]
            ddl = (f"CREATE TABLE IF NOT EXISTS {t.name} ({', '.join(cols)}, created_at REAL NOT NULL, "
                   f"UNIQUE ({', '.join(t.key_names)}))")
            try:
                with self._db:
                    self._db.execute(ddl)
            except sqlite3.DatabaseError as e:
                raise QscaleError(f"cannot open study store {self.path}: {e}") from e
            self._tables[t.name] = t

    def _table(self, name: str) -> Table:
        if name not in self._tables:
            raise QscaleError(f"unknown store table {name!r} (known: {', '.join(self._tables) or 'none'})")
        return self._tables[name]

    def _where(self, table: Table, where: Mapping[str, Any]) -> tuple[str, list]:
        cols = {c.name: c for c in table.columns}
        bad = [k for k in where if k not in cols]
        if bad:
            raise QscaleError(f"table {table.name}: unknown column(s) {', '.join(bad)}")
        clause = " AND ".join(f"{k}=?" for k in where)
        return (f" WHERE {clause}" if clause else ""), [encode(cols[k], v, table.name) for k, v in where.items()]

    def has(self, key: CellKey) -> bool:
        t = self._table(key.table)
        clause, args = self._where(t, key.as_dict())
        return self._db.execute(f"SELECT 1 FROM {t.name}{clause} LIMIT 1", args).fetchone() is not None

    def add_many(self, rows: Sequence[Row]) -> int:
        n = 0
        with self._db:
            for row in rows:
                t = self._table(row.key.table)
                values = {**row_values(t, row), "created_at": time.time()}
                cur = self._db.execute(f"INSERT OR IGNORE INTO {t.name} ({', '.join(values)}) "
                                       f"VALUES ({', '.join('?' * len(values))})", list(values.values()))
                n += cur.rowcount
        return n

    def rows(self, table: str, where: Mapping[str, Any] | None = None) -> list[dict]:
        t = self._table(table)
        clause, args = self._where(t, where or {})
        cols = {c.name: c for c in t.columns}
        found = self._db.execute(f"SELECT * FROM {t.name}{clause} ORDER BY rowid", args).fetchall()
        return [{k: decode(cols.get(k), r[k]) for k in r.keys()} for r in found]

    def count(self, table: str) -> int:
        return int(self._db.execute(f"SELECT COUNT(*) FROM {self._table(table).name}").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def open_store(target: str | Path, tables: Sequence[Table] = ()) -> Store:
    """The store at ``target``: a file path (SQLite). Other backends add their URL scheme here."""
    text = str(target)
    if "://" in text and not text.startswith("sqlite://"):
        raise QscaleError(f"unsupported store {text!r}: give a path to a .sqlite file")
    return SqliteStore(text.removeprefix("sqlite://"), tables)
