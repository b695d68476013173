"""Fixtures of the study tests: ``pg_url``, a throwaway PostgreSQL server: ``initdb`` + ``pg_ctl`` from the Debian ``postgresql`` package,
listening only on a Unix socket in a temp dir (no TCP), trust auth; run as ``postgres`` when we are root
(initdb refuses root)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def server_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` holding initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    for p in reversed(found):
        if (Path(p).parent / "pg_ctl").exists():
            return Path(p).parent
    return None


def skip_reason() -> str | None:
    if server_bin() is None:
        return "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb; apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as an unprivileged user"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg 3 is not installed (pip install 'qscale[postgres]')"
    return None


@contextlib.contextmanager
def postgres(tmp: Path) -> Iterator[str]:
    """Start a server in ``tmp``; yields a ``postgresql://`` URL to its ``postgres`` database over the socket."""
    bindir = server_bin()
    data, sock = tmp / "data", tmp / "sock"
    sock.mkdir(parents=True)
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    opts = f"-c listen_addresses='' -k {sock} -c fsync=off -c max_connections=40"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(tmp / "log"), "-w", "-t", "60", "start")
    try:
        yield f"postgresql://postgres@/postgres?host={sock}"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")


@pytest.fixture(scope="session")
def pg_url():
    """A running server's URL (skipped, saying why, where no server binary or psycopg exists)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    tmp = Path(tempfile.mkdtemp(prefix="qscale-pg-"))  # not under pytest's root-only tmp: the server runs as postgres
    try:
        with postgres(tmp) as url:
            yield url
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
