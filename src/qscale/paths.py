"""Output paths checked before any long work: a folder to be written must be a folder (or not exist yet) and
writable, a file's folder must exist and be writable. Every failure is one :class:`~qscale.errors.QscaleError`.

Writability is probed by creating (and removing) a temporary file, not with ``os.access``: root, ACLs and
read-only mounts make the permission bits say nothing reliable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qscale.errors import QscaleError


def nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable(folder: Path) -> str | None:
    """None when a file can be created in ``folder``, else why not (the OS's words)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".qscale-probe.")
    except OSError as e:
        return e.strerror or type(e).__name__
    os.close(fd)
    os.unlink(tmp)
    return None


def check_out_folder(path: str | Path, flag: str = "--out") -> None:
    """``path`` will hold a folder: it is one already or can be created, and files can be written in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise QscaleError(f"{flag} {path} is a file, not a folder: choose a folder path")
    base = nearest_existing(path)
    if not base.is_dir():
        raise QscaleError(f"{flag} {path}: {base} is a file, so no folder can be created there")
    why = writable(base)
    if why:
        raise QscaleError(f"{flag} {path}: cannot write in {base} ({why}); choose a writable folder")


def check_out_file(path: str | Path, flag: str) -> None:
    """``path`` will be written as a file: it is not a folder, and its (existing) folder is writable."""
    path = Path(path)
    if path.is_dir():
        raise QscaleError(f"{flag} {path} is a folder: give a file name")
    if not path.parent.is_dir():
        raise QscaleError(f"{flag} {path}: folder {path.parent} does not exist")
    why = writable(path.parent)
    if why:
        raise QscaleError(f"{flag} {path}: cannot write in {path.parent} ({why}); choose a writable folder")


def outside(out: str | Path, src: str | Path, what: str, flag: str = "--out") -> None:
    """``out`` is neither the folder ``src`` nor inside it (a result written into its own source)."""
    o, s = Path(out).resolve(), Path(src).resolve()
    if o == s:
        raise QscaleError(f"{flag} must not be the {what} folder itself ({src})")
    if s.is_dir() and o.is_relative_to(s):
        raise QscaleError(f"{flag} {out} is inside the {what} folder {src}: choose a folder outside it")
