"""The study core: tables, cell keys, tasks and the study-definition protocol.

A study (QiD: Ouyang et al. 2024, SPEC §1; QAT: Chen et al. 2025, SPEC §2) is a *definition* that
declares its tables, lists its tasks and writes its report from the stored rows. A task is one picklable
function call: either it measures cells into typed rows (it carries their :class:`CellKey`, and the
runner skips it when they are stored), or it produces an input other tasks depend on (a trained suite
size whose checkpoints the cells quantize). The runner (:mod:`qscale.study.runner`) hands the missing
tasks to an executor (:mod:`qscale.study.executor` in process, :mod:`qscale.study.ray_executor` on Ray) and commits
every row to a store (:mod:`qscale.study.store`) as soon as it arrives.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from qscale.errors import QscaleError, require
from qscale.provenance import config_hash

COLUMN_TYPES = ("int", "float", "text", "json", "array")


@dataclass(frozen=True)
class Column:
    """A stored column: ``int``, ``float``, ``text``, ``json`` (a dict) or ``array`` (1-D float64)."""

    name: str
    type: str
    nullable: bool = False

    def __post_init__(self) -> None:
        require(self.type in COLUMN_TYPES, f"column {self.name!r}: unknown type {self.type!r}")


def columns(spec: str) -> tuple[Column, ...]:
    """``"N:int D:int loss:float train_loss:float?"`` -> columns (``?`` = nullable)."""
    out = []
    for item in spec.split():
        name, _, typ = item.partition(":")
        out.append(Column(name, typ.rstrip("?"), typ.endswith("?")))
    return tuple(out)


@dataclass(frozen=True)
class Table:
    """A table of rows: ``key`` columns form the UNIQUE cell key (``run`` and ``config_hash`` among them)."""

    name: str
    key: tuple[Column, ...]
    values: tuple[Column, ...]

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        require(len(set(names)) == len(names), f"table {self.name!r} repeats a column")
        require("created_at" not in names, "created_at is added by the store")

    @property
    def columns(self) -> tuple[Column, ...]:
        return (*self.key, *self.values)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.key)


@dataclass(frozen=True)
class CellKey:
    """Which cell a row belongs to: its table and key-column values (``config_hash`` included).

    A key may name fewer columns than the table's key (e.g. no ``layer`` for per-layer rows): it then
    matches every row with those values.
    """

    table: str
    items: tuple[tuple[str, Any], ...]

    @classmethod
    def make(cls, table: str, config: Any = None, **coords) -> CellKey:
        """A key from coordinates; ``config`` (any dataclass / JSON value) is hashed into ``config_hash``."""
        if config is not None:
            coords["config_hash"] = config_hash(config)
        return cls(table, tuple(coords.items()))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items)

    def __getitem__(self, name: str) -> Any:
        return self.as_dict()[name]

    @property
    def config_hash(self) -> str | None:
        return self.as_dict().get("config_hash")

    def with_(self, **coords) -> CellKey:
        """This key with coordinates added or replaced (e.g. one more key column)."""
        return CellKey(self.table, tuple({**self.as_dict(), **coords}.items()))


@dataclass(frozen=True)
class Row:
    """Base of typed rows: a :class:`CellKey` and value fields; ``record()`` gives the stored values.

    Subclasses are frozen dataclasses whose fields (other than ``key``) are the table's value columns
    (derived columns via ``extra()``).
    """

    key: CellKey

    def extra(self) -> dict[str, Any]:
        return {}

    def record(self) -> dict[str, Any]:
        vals = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "key"}
        return {**vals, **self.extra()}


@dataclass(frozen=True)
class Task:
    """One picklable unit of work: ``fn(*args, *dep_results)``.

    keys:  the rows the task produces (returned as a :class:`Row` or a list of them); when every key is
           stored the task is skipped and its dependents receive the stored record of ``keys[0]``.
    deps:  ids of tasks whose results are appended to ``args`` (in order). A task without keys (e.g.
           finding or training a suite's final checkpoint) runs only when a task that depends on it runs.
    phase: the timing bucket of the runner (``train``, ``fp_eval``, ``quantize``, ...).
    cpus, gpus: what the task needs on a cluster (the Ray executor reserves them; the local one ignores them).
    own_progress: the task draws its own progress bar (suite training): the runner pauses its bar meanwhile.

    ``fn`` must be a module-level function and ``args`` picklable so that a remote executor can ship them.
    """

    id: str
    fn: Callable[..., Any]
    args: tuple = ()
    deps: tuple[str, ...] = ()
    keys: tuple[CellKey, ...] = ()
    phase: str = "measure"
    label: str = ""
    cpus: float = 1.0
    gpus: float = 0.0
    own_progress: bool = False


class Store(ABC):
    """A result store: tables of rows with a UNIQUE cell key, every ``add`` committed at once.

    SQLite (:class:`qscale.study.store.SqliteStore`) or PostgreSQL (:class:`qscale.study.pg_store.PostgresStore`),
    opened by :func:`qscale.study.backends.open_store`. Rows read back are dicts of column -> value (``json`` as
    dict, ``array`` as float64 array).
    """

    @abstractmethod
    def create(self, tables: Sequence[Table]) -> None:
        """Create the tables if missing (idempotent) and remember their schemas."""

    @abstractmethod
    def has(self, key: CellKey) -> bool:
        """Whether a row matching ``key`` is stored."""

    @abstractmethod
    def add_many(self, rows: Sequence[Row]) -> int:
        """Insert and commit rows in one transaction; a stored cell is left as it is. Returns how many were new."""

    @abstractmethod
    def rows(self, table: str, where: Mapping[str, Any] | None = None) -> list[dict]:
        """Rows of ``table`` matching the equalities ``where`` (all if None), in insertion order."""

    @abstractmethod
    def record_failure(self, task_id: str, label: str, error: str, attempts: int) -> None:
        """Record (or replace) that a task failed after ``attempts`` attempts with ``error``."""

    @abstractmethod
    def clear_failure(self, task_id: str) -> None:
        """Forget a recorded failure (the task has now succeeded)."""

    @abstractmethod
    def failures(self) -> list[dict]:
        """Recorded failures: ``task_id``, ``label``, ``error``, ``attempts``, ``created_at``."""

    @abstractmethod
    def close(self) -> None: ...

    def add(self, row: Row) -> bool:
        """Insert and commit one row; False (nothing changed) if its cell is stored."""
        return self.add_many([row]) == 1

    def get(self, key: CellKey) -> dict | None:
        """The first stored row matching ``key``, or None."""
        found = self.rows(key.table, key.as_dict())
        return found[0] if found else None

    def count(self, table: str) -> int:
        return len(self.rows(table))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StudyDefinition(Protocol):
    """A study on the core: its tables, its tasks (cells and their inputs) and its report."""

    name: str

    def tables(self) -> tuple[Table, ...]: ...

    def tasks(self) -> list[Task]: ...

    def report(self, store: Store) -> Any: ...


def topological(tasks: Sequence[Task]) -> list[Task]:
    """Tasks ordered so that every task comes after its dependencies (stable otherwise)."""
    by_id = {t.id: t for t in tasks}
    require(len(by_id) == len(tasks), "two tasks share an id")
    out, state = [], {}

    def visit(t: Task, path: tuple[str, ...]) -> None:
        if state.get(t.id) == "done":
            return
        if t.id in path:
            raise QscaleError(f"tasks depend on each other in a cycle: {' -> '.join((*path, t.id))}")
        for d in t.deps:
            if d not in by_id:
                raise QscaleError(f"task {t.id!r} depends on unknown task {d!r}")
            visit(by_id[d], (*path, t.id))
        state[t.id] = "done"
        out.append(t)

    for t in tasks:
        visit(t, ())
    return out
