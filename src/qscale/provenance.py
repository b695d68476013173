"""What every run records: seed, config hash, library versions; atomic file writes.

Atomic writes go through a temp file or folder and a rename. ``mkstemp``/``mkdtemp`` create them 0600/0700
whatever the umask; :func:`temp_dir` and :func:`atomic_write_bytes` give them the mode an ordinary ``open`` or
``mkdir`` would (0644/0755 under umask 022), so another user or a serving process can read the outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from qscale._version import __version__


def versions() -> dict[str, str]:
    """Versions of Python and the libraries whose numbers a result depends on."""
    import scipy
    import torch
    import transformers

    return {
        "qscale": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and numpy scalars as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a config (dataclass or JSON-able value)."""
    blob = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; make torch deterministic on CPU."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def current_umask() -> int:
    """The process umask (from ``/proc/self/status`` where it exists: reading it there changes nothing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """``tempfile.mkdtemp`` in ``parent``, with the mode ``mkdir`` would give it (not 0700)."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 -> what open() would create
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n").encode())
