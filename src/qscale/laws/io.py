"""Load a table of observations from CSV, Parquet or the study's SQLite store, with column mapping.

Columns become 1-D arrays: numeric where every value parses as a number, strings otherwise (e.g. the
``precision`` label column). ``columns`` maps the names the laws use to names in the file
(``{"N": "n_params"}``); unmapped law names are read as they are.
"""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from qscale.errors import QscaleError

SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
DEFAULT_TABLE = "qid"


def _column(values: list) -> np.ndarray:
    try:
        return np.array([float("nan") if v is None or v == "" else float(v) for v in values], dtype=float)
    except (TypeError, ValueError):
        return np.array(["" if v is None else str(v) for v in values], dtype=object)


def _read_csv(path: Path) -> dict[str, list]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise QscaleError(f"{path}: empty CSV file (no header)")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:  # a binary file, NUL bytes, a broken quote
        raise QscaleError(f"{path}: not a UTF-8 CSV text file ({type(e).__name__})") from None
    return {name: [r[name] for r in rows] for name in reader.fieldnames}


def _read_parquet(path: Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pydict()
    except Exception as e:  # pyarrow raises several types for a bad file
        raise QscaleError(f"{path}: cannot read Parquet file ({e})") from None


def _read_sqlite(path: Path, table: str | None, where: str | None) -> dict[str, list]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        try:
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
        except sqlite3.DatabaseError as e:
            raise QscaleError(f"{path}: not a SQLite database ({e})") from None
        if not tables:
            raise QscaleError(f"{path}: the database has no tables (an empty file, or a copy without its -wal file)")
        if table is None:
            if len(tables) == 1:
                table = tables[0]
            elif DEFAULT_TABLE in tables:
                table = DEFAULT_TABLE
            else:
                raise QscaleError(f"{path}: several tables ({', '.join(tables)}); choose one with --table")
        if table not in tables:
            raise QscaleError(f"{path}: no table {table!r} (have: {', '.join(tables) or 'none'})")
        query = f'SELECT * FROM "{table}"' + (f" WHERE {where}" if where else "")
        try:
            cur = con.execute(query)
        except sqlite3.Error as e:
            raise QscaleError(f"{path}: bad --where filter {where!r} ({e})") from None
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        con.close()
    return {n: [r[i] for r in rows] for i, n in enumerate(names)}


def load_table(
    path: str | Path, table: str | None = None, where: str | None = None, columns: Mapping[str, str] | None = None
) -> dict[str, np.ndarray]:
    """Read ``path`` (.csv, .parquet, .sqlite/.db) as columns; ``columns`` renames file columns to law names.

    ``table`` and ``where`` (an SQL condition such as ``method = 'gptq'``) apply to SQLite only.
    """
    path = Path(path)
    if not path.is_file():
        raise QscaleError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SQLITE_SUFFIXES:
        raw = _read_sqlite(path, table, where)
    elif table is not None or where is not None:
        raise QscaleError("--table and --where apply to SQLite files only")
    elif suffix == ".csv":
        raw = _read_csv(path)
    elif suffix in (".parquet", ".pq"):
        raw = _read_parquet(path)
    else:
        raise QscaleError(f"{path}: unknown data format {suffix!r} (use .csv, .parquet or .sqlite/.db)")
    data = {name: _column(values) for name, values in raw.items()}
    for law_name, file_name in (columns or {}).items():
        if file_name not in data:
            raise QscaleError(f"{path}: column {file_name!r} (for {law_name}) not found (have: {', '.join(data)})")
        data[law_name] = data[file_name]
    return data


def parse_column_map(items: list[str] | None) -> dict[str, str]:
    """``["N=n_params", "D=tokens"]`` -> ``{"N": "n_params", "D": "tokens"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        law_name, sep, file_name = item.partition("=")
        if not sep or not law_name.strip() or not file_name.strip():
            raise QscaleError(f"--col expects LAW_NAME=FILE_COLUMN, got {item!r}")
        out[law_name.strip()] = file_name.strip()
    return out
