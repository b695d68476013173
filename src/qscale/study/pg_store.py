"""The PostgreSQL study store (``--db postgresql://user@host/db``), through psycopg 3 (extra ``postgres``).

Same tables, columns and migrations as the SQLite store (:mod:`qscale.study.store`); types map to BIGINT,
DOUBLE PRECISION, TEXT and BYTEA, and each result table has an explicit ``rowid`` (BIGSERIAL: SQLite's
implicit one) so rows read back in insertion order. Writers on many hosts are safe: rows go in with
``INSERT ... ON CONFLICT DO NOTHING`` on the cell key, one transaction per ``add_many``, and schema changes
(migrations, ``CREATE TABLE``) are serialized by a transaction-scoped advisory lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from qscale.errors import QscaleError
from qscale.study.core import Table
from qscale.study.store import SqlStore

try:
    import psycopg
except ImportError:  # optional extra
    psycopg = None

SCHEMA_LOCK = 0x71536361  # advisory lock key of qscale's schema changes ("qSca")


def _redact(url: str) -> str:
    """The URL without its password (for messages)."""
    head, sep, tail = url.rpartition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user = head.partition("//")
    return f"{scheme}//{user.split(':', 1)[0]}:***@{tail}"


class PostgresStore(SqlStore):
    """A PostgreSQL database; tables created on :meth:`create` (also from ``tables`` at open)."""

    types: ClassVar[dict[str, str]] = {
        "int": "BIGINT",
        "float": "DOUBLE PRECISION",
        "text": "TEXT",
        "json": "TEXT",
        "array": "BYTEA",
    }
    mark = "%s"

    def __init__(self, url: str, tables: Sequence[Table] = ()):
        if psycopg is None:
            raise QscaleError("a postgresql:// store needs psycopg 3: pip install 'qscale[postgres]'")
        self.where = _redact(url)
        try:
            self._db = psycopg.connect(url, autocommit=True)
        except psycopg.Error as e:
            raise QscaleError(f"cannot open study store {self.where}: {str(e).strip().splitlines()[0]}") from e
        self._depth = 0
        self._setup(tables)

    @contextlib.contextmanager
    def _tx(self, exclusive: bool = False) -> Iterator[None]:
        if self._depth:
            yield
            return
        self._depth += 1
        try:
            with self._db.transaction():
                if exclusive:
                    self._exec("SELECT pg_advisory_xact_lock(%s)", [SCHEMA_LOCK])
                yield
        finally:
            self._depth -= 1

    def _exec(self, sql: str, args: Sequence = ()) -> Any:
        try:
            return self._db.execute(sql, list(args))
        except psycopg.Error as e:
            raise self._fail(e) from e

    def _insert_ignore(self, table: str, cols: Sequence[str]) -> str:
        return (
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) ON CONFLICT DO NOTHING"
        )

    def _ddl_extra(self) -> str:
        return "rowid BIGSERIAL PRIMARY KEY, "

    def close(self) -> None:
        self._db.close()
