"""Checkpoints on disk, written atomically (temp folder, fsync, rename): a kill never leaves a
half-written folder under a final name.

Run folder layout::

    run/step-000128/   config.json, model.safetensors (save_pretrained), tokenizer.json, qscale.json
    run/state/         resume state: model.safetensors, optimizer.pt, rng.pt, trainer.json
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qscale.errors import QscaleError

META = "qscale.json"
_STEP_PREFIX = "step-"


@dataclass
class CheckpointInfo:
    """One saved checkpoint: a HF ``save_pretrained`` folder with its qscale metadata."""

    path: Path
    tokens: int
    step: int
    meta: dict


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def atomic_folder(target: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a fresh temp folder next to ``target``, fsync it, rename it to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp"))
    old = target.parent / f".{target.name}.old"
    try:
        write(tmp)
        _fsync_tree(tmp)
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")


def tokenizer_side_files(model: Path | None, tokenizer_hash: str) -> list[Path]:
    """The ``--model`` folder's tokenizer side files (BOS/EOS, special tokens, chat template), for its checkpoints
    to load with ``AutoTokenizer`` as the source did; none when the run uses another tokenizer."""
    from qscale.data.tokenizer import folder_tokenizer, load_tokenizer
    from qscale.data.tokenizer import tokenizer_hash as hash_of

    found = folder_tokenizer(model) if model is not None else None
    if found is None or hash_of(load_tokenizer(found)) != tokenizer_hash:
        return []
    return [model / name for name in TOKENIZER_SIDE_FILES if (model / name).is_file()]
