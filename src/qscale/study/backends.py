"""What ``--db`` and ``--executor``/``--address`` name: the study's store and where its tasks run; and the lock
that lets one study run per folder."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from qscale.errors import QscaleError, require
from qscale.study.core import Store, Table
from qscale.study.executor import Executor, LocalExecutor
from qscale.study.pg_store import PostgresStore
from qscale.study.ray_executor import RayExecutor
from qscale.study.store import SqliteStore

LOCK_FILE = ".study.lock"
EXECUTORS = ("local", "ray")


def open_store(target: str | Path, tables: Sequence[Table] = ()) -> Store:
    """The store at ``target``: ``postgresql://...`` (or ``postgres://``) or a path to a SQLite file."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text, tables)
    if "://" in text and not text.startswith("sqlite://"):
        raise QscaleError(f"unsupported store {text!r}: give a path to a .sqlite file or a postgresql:// URL")
    return SqliteStore(text.removeprefix("sqlite://"), tables)


def make_executor(name: str, address: str | None = None, gpus_per_task: float = 0.0) -> Executor:
    """The executor ``--executor`` names."""
    require(name in EXECUTORS, f"unknown executor {name!r} (choose from {', '.join(EXECUTORS)})")
    require(gpus_per_task >= 0, f"--gpus-per-task must be >= 0, got {gpus_per_task}")
    if name == "local":
        return LocalExecutor()
    return RayExecutor(address, gpus_per_task=gpus_per_task)


@contextlib.contextmanager
def study_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the study folder (``flock`` on ``.study.lock``; the OS drops it when the
    process dies), or fail at once saying that another study is running there."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise QscaleError(f"another study is running in {folder} (pid {holder}); wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
