"""Flags shared by ``qscale study qid`` and ``qscale study qat``, and comma-separated lists parsed with one-line
errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer

from qscale.errors import QscaleError
from qscale.paths import check_out_folder

T = TypeVar("T")


def comma_list(text: str | None, convert: Callable[[str], T], what: str, kind: str) -> tuple[T, ...] | None:
    """``"2, 3,4"`` -> ``(2, 3, 4)`` with ``convert``; None or empty text -> None (the preset's default)."""
    if not text:
        return None
    try:
        return tuple(convert(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise QscaleError(f"{what} must be comma-separated {kind}, got {text!r}") from None


def ints(text: str | None, what: str) -> tuple[int, ...] | None:
    return comma_list(text, int, what, "integers")


def floats(text: str | None, what: str) -> tuple[float, ...] | None:
    return comma_list(text, float, what, "numbers")


def names(text: str | None) -> tuple[str, ...] | None:
    return comma_list(text, str, "names", "names")


DATA_OPTION = typer.Option(
    None,
    "--data",
    help="Text corpus: .txt, .jsonl, .parquet or a folder of them. "
    "Default: the embedded Python standard library sources.",
)
TOKENIZER_OPTION = typer.Option(
    None, "--tokenizer", help="tokenizer.json to use. Default: a byte-level BPE trained on the train split (cached)."
)
PROGRESS_OPTION = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
DB_OPTION = typer.Option(
    None,
    "--db",
    help="Result store: a SQLite file path (default: OUT/study.sqlite) or "
    "postgresql://user:pass@host/db (needs qscale[postgres]).",
)
EXECUTOR_OPTION = typer.Option(
    "local",
    "--executor",
    help="Where cells run: local (in this process) or ray (one Ray task per cell; needs qscale[ray]).",
)
ADDRESS_OPTION = typer.Option(
    None,
    "--address",
    help="Ray cluster for --executor ray. Default: as ray.init() - "
    "the cluster this host belongs to (RAY_ADDRESS, the latest 'ray start'), else a new "
    "local one; auto: join an existing cluster only; HOST:PORT: that cluster.",
)
GPUS_OPTION = typer.Option(0.0, "--gpus-per-task", help="GPUs each Ray task reserves (e.g. 1 on a GPU cluster).")


def parse_target(text: str | None) -> tuple[float, float, float] | None:
    """``"7e9,2e12,4"`` -> (N, D, P) for ranking methods; None when not given."""
    values = floats(text, "--target")
    if values is None:
        return None
    if len(values) != 3 or not all(v > 0 for v in values):
        raise QscaleError(f"--target must be three positive numbers N,D,P (e.g. 7e9,2e12,4), got {text!r}")
    return values


def check_study_paths(out_dir: Path, db: str | None) -> None:
    """Before any cell runs: the study folder (and a SQLite ``--db`` path) can be written."""
    check_out_folder(out_dir)
    if db and "://" not in db:
        path = Path(db.removeprefix("sqlite://"))
        if path.is_dir():
            raise QscaleError(f"--db {db} is a folder: give the path of a .sqlite file")
        check_out_folder(path.parent, "--db")
