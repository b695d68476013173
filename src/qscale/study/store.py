"""Study stores: the SQL implementation of :class:`~qscale.study.core.Store`, and SQLite.

One database holds every table of a study: a ``study.sqlite`` file (default) or a PostgreSQL database
(:mod:`qscale.study.pg_store`, ``postgresql://...``), with the same schema. Each ``add_many`` is one committed
transaction that inserts-or-ignores on the table's UNIQUE cell key, so a study killed at any point loses at
most the cell it was computing, a re-run skips what is stored, and many writers (processes, hosts) can add
rows at once without losing any. SQLite runs in WAL mode (a reader, e.g. the laws engine, can open the file
while a study writes; writers wait on each other up to 60 s). Column names follow the laws engine's
defaults (``N``, ``D``, ``P``, ``G``, ``qid``, ``delta``), so ``qscale.laws.load_table("study.sqlite",
table="qid")`` reads a table as it is.

The store's own tables (``task_failures``: cells that failed after their retries) come from the versioned
SQL files in ``qscale/study/migrations`` (``NNNN_name.sql``), applied in order and recorded in
``schema_version``; result tables are created from each study's :class:`Table` definitions.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import math
import re
import sqlite3
import time
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qscale.errors import QscaleError
from qscale.study.core import CellKey, Column, Row, Store, Table

__all__ = ["SqlStore", "SqliteStore", "Store", "decode", "encode", "migrations", "row_values"]


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
        return np.frombuffer(bytes(value), dtype=np.float64).copy()
    return value


def row_values(table: Table, row: Row) -> dict[str, Any]:
    """Key and value columns of ``row`` checked against ``table`` (no column missing, none unknown)."""
    values = {**row.key.as_dict(), **row.record()}
    unknown = set(values) - {c.name for c in table.columns}
    if unknown:
        raise QscaleError(f"table {table.name}: unknown column(s) {', '.join(sorted(unknown))}")
    return {c.name: encode(c, values.get(c.name), table.name) for c in table.columns}


def migrations() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every file in ``qscale/study/migrations``, in version order."""
    out = []
    for f in importlib.resources.files("qscale.study").joinpath("migrations").iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", f.name)
        if m:
            out.append((int(m.group(1)), m.group(2), f.read_text()))
    return sorted(out)


class SqlStore(Store):
    """A :class:`Store` over a DB-API connection; subclasses give the dialect (types, placeholders,
    inserting without overwriting, transactions and the lock that serializes schema changes)."""

    where: str  # the database, in messages
    types: dict[str, str]  # column type -> SQL type
    mark = "?"  # parameter placeholder

    def _setup(self, tables: Sequence[Table]) -> None:
        self._tables: dict[str, Table] = {}
        self._migrate()
        self.create(tables)

    @abstractmethod
    def _tx(self, exclusive: bool = False) -> contextlib.AbstractContextManager:
        """A transaction (committed on exit, rolled back on error) holding the schema lock if ``exclusive``."""

    @abstractmethod
    def _exec(self, sql: str, args: Sequence = ()) -> Any:
        """Execute one statement; returns the cursor."""

    @abstractmethod
    def _insert_ignore(self, table: str, cols: Sequence[str]) -> str: ...

    @abstractmethod
    def _ddl_extra(self) -> str:
        """Extra column definitions of a result table (PostgreSQL's explicit ``rowid``)."""

    def _fail(self, e: Exception) -> QscaleError:
        text = str(e).strip()
        return QscaleError(f"study store {self.where}: {text.splitlines()[0] if text else type(e).__name__}")

    def _migrate(self) -> None:
        """Apply the migrations newer than the stored ``schema_version``, each in its own transaction."""
        known = migrations()
        with self._tx(exclusive=True):
            self._exec(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = self._exec("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        if known and current > known[-1][0]:
            raise QscaleError(
                f"study store {self.where} has schema version {current}, newer than this qscale's "
                f"{known[-1][0]}: upgrade qscale"
            )
        for version, name, sql in known:
            with self._tx(exclusive=True):
                if self._exec(f"SELECT 1 FROM schema_version WHERE version={self.mark}", [version]).fetchone():
                    continue  # another process applied it meanwhile
                for statement in (s.strip() for s in sql.split(";")):
                    if statement and not all(line.startswith("--") for line in statement.splitlines()):
                        self._exec(statement)
                self._exec(
                    f"INSERT INTO schema_version VALUES ({self.mark}, {self.mark}, {self.mark})",
                    [version, name, time.time()],
                )

    def schema_version(self) -> int:
        return int(self._exec("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)

    def create(self, tables: Sequence[Table]) -> None:
        for t in tables:
            cols = [f"{c.name} {self.types[c.type]}{'' if c.nullable else ' NOT NULL'}" for c in t.columns]
            ddl = (
                f"CREATE TABLE IF NOT EXISTS {t.name} ({self._ddl_extra()}{', '.join(cols)}, "
                f"created_at DOUBLE PRECISION NOT NULL, UNIQUE ({', '.join(t.key_names)}))"
            )
            with self._tx(exclusive=True):
                self._exec(ddl)
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
        clause = " AND ".join(f"{k}={self.mark}" for k in where)
        return (f" WHERE {clause}" if clause else ""), [encode(cols[k], v, table.name) for k, v in where.items()]

    def has(self, key: CellKey) -> bool:
        t = self._table(key.table)
        clause, args = self._where(t, key.as_dict())
        with self._tx():
            return self._exec(f"SELECT 1 FROM {t.name}{clause} LIMIT 1", args).fetchone() is not None

    def add_many(self, rows: Sequence[Row]) -> int:
        n = 0
        with self._tx():
            for row in rows:
                t = self._table(row.key.table)
                values = {**row_values(t, row), "created_at": time.time()}
                n += self._exec(self._insert_ignore(t.name, list(values)), list(values.values())).rowcount
        return n

    def rows(self, table: str, where: Mapping[str, Any] | None = None) -> list[dict]:
        t = self._table(table)
        clause, args = self._where(t, where or {})
        names = [c.name for c in t.columns] + ["created_at"]
        with self._tx():
            found = self._exec(f"SELECT {', '.join(names)} FROM {t.name}{clause} ORDER BY rowid", args).fetchall()
        cols = {c.name: c for c in t.columns}
        return [{k: decode(cols.get(k), v) for k, v in zip(names, r, strict=True)} for r in found]

    def count(self, table: str) -> int:
        with self._tx():
            return int(self._exec(f"SELECT COUNT(*) FROM {self._table(table).name}").fetchone()[0])

    def record_failure(self, task_id: str, label: str, error: str, attempts: int) -> None:
        with self._tx():
            self._exec(f"DELETE FROM task_failures WHERE task_id={self.mark}", [task_id])
            self._exec(
                f"INSERT INTO task_failures VALUES ({', '.join([self.mark] * 5)})",
                [task_id, label, error, attempts, time.time()],
            )

    def clear_failure(self, task_id: str) -> None:
        with self._tx():
            self._exec(f"DELETE FROM task_failures WHERE task_id={self.mark}", [task_id])

    def failures(self) -> list[dict]:
        names = ["task_id", "label", "error", "attempts", "created_at"]
        with self._tx():
            found = self._exec(f"SELECT {', '.join(names)} FROM task_failures ORDER BY task_id").fetchall()
        return [dict(zip(names, r, strict=True)) for r in found]


class SqliteStore(SqlStore):
    """One SQLite file in WAL mode; tables created on :meth:`create` (also from ``tables`` at open)."""

    types: ClassVar[dict[str, str]] = {
        "int": "INTEGER",
        "float": "REAL",
        "text": "TEXT",
        "json": "TEXT",
        "array": "BLOB",
    }

    def __init__(self, path: str | Path, tables: Sequence[Table] = ()):
        self.path = Path(path)
        self.where = str(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)  # explicit transactions
            self._db.execute("PRAGMA journal_mode=WAL")
            self._setup(tables)
        except (sqlite3.DatabaseError, OSError) as e:
            raise QscaleError(f"cannot open study store {self.path}: {e}") from e

    @contextlib.contextmanager
    def _tx(self, exclusive: bool = False) -> Iterator[None]:
        if self._db.in_transaction:  # nested: the outer transaction commits
            yield
            return
        self._db.execute("BEGIN IMMEDIATE" if exclusive else "BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _exec(self, sql: str, args: Sequence = ()) -> Any:
        try:
            return self._db.execute(sql, list(args))
        except sqlite3.DatabaseError as e:
            raise self._fail(e) from e

    def _insert_ignore(self, table: str, cols: Sequence[str]) -> str:
        return f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"

    def _ddl_extra(self) -> str:
        return ""

    def close(self) -> None:
        self._db.close()
