"""Checkpoints on disk, written atomically (temp folder, fsync, rename): a kill never leaves a
half-written folder under a final name.

Run folder layout::

    run/step-000128/   config.json, model.safetensors (save_pretrained), tokenizer.json, qscale.json
    run/state/         resume state: model.safetensors, optimizer.pt, rng.pt, trainer.json
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qscale.errors import QscaleError
from qscale.provenance import current_umask, temp_dir

META = "qscale.json"
_STEP_PREFIX = "step-"


@dataclass
class CheckpointInfo:
    """One saved checkpoint: a HF ``save_pretrained`` folder with its qscale metadata."""

    path: Path
    tokens: int
    step: int
    meta: dict


def _settle_tree(folder: Path) -> None:
    """fsync every file; give files and folders the umask's mode (some writers, safetensors' among them,
    create 0600 files; ``copy2`` keeps a source file's mode)."""
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for p in folder.rglob("*"):
        if p.is_symlink():
            continue
        if p.is_dir():
            os.chmod(p, 0o777 & ~mask)
        elif p.is_file():
            os.chmod(p, 0o666 & ~mask)
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def atomic_folder(target: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a fresh temp folder next to ``target``, fsync it, rename it to ``target``.

    The folder and its files get the modes the umask gives (0755/0644 under 022), not the temp folder's 0700."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(target.parent, f".{target.name}.tmp")
    old = target.parent / f".{target.name}.old"
    try:
        write(tmp)
        _settle_tree(tmp)
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_state_file(path: Path):
    """``torch.load`` of a resume-state file, data only: tensors, numbers, strings and containers (plus the
    NumPy array inside ``np.random.get_state()``). ``weights_only=True`` unpickles no other class and calls no
    function, so a crafted file from a shared run folder is refused, never run."""
    import numpy as np
    import torch

    core = getattr(np, "_core", None) or np.core  # NumPy 2 / 1
    numpy_types = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(numpy_types):
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it names {found.group(1)})" if found else ""
        raise QscaleError(
            f"refusing to load {path}: it holds more than tensors and plain values{what}, and "
            "unpickling it could run code; delete the run's state folder to start afresh"
        ) from None


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"{_STEP_PREFIX}{step:06d}"


def read_checkpoint(path: Path) -> CheckpointInfo | None:
    """The checkpoint at ``path`` if it is complete (metadata, config and weights), else None."""
    path = Path(path)
    meta_path = path / META
    if not (meta_path.is_file() and (path / "config.json").is_file()):
        return None
    if not any(path.glob("*.safetensors")):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        return CheckpointInfo(path, int(meta["tokens"]), int(meta["step"]), meta)
    except (ValueError, KeyError, TypeError):
        return None


def list_checkpoints(run_dir: str | Path) -> list[CheckpointInfo]:
    """Complete checkpoints of a run folder, sorted by tokens seen; temp and broken folders are skipped."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise QscaleError(f"run folder does not exist: {run_dir}")
    found = (read_checkpoint(p) for p in sorted(run_dir.glob(f"{_STEP_PREFIX}*")) if p.is_dir())
    return sorted((c for c in found if c is not None), key=lambda c: (c.tokens, c.step))
