"""Text corpora: the embedded Python standard library sources, or the user's own files.

A corpus is a list of documents split deterministically into train and validation:

* embedded (``data=None``): every ``.py`` file under ``sysconfig.get_paths()['stdlib']``, excluding
  third-party ``site-packages`` / ``dist-packages``, sorted by relative path and deduplicated by content
  hash. A file goes to validation when the hash of its relative path falls in the first ``VAL_PERCENT``
  of 100 buckets, so no file is in both splits and the split does not depend on which files exist.
* ``data=PATH``: a ``.txt`` file (one document), a ``.jsonl`` file (one document per line, ``text``
  field), a ``.parquet`` file (``text`` column) or a folder of them. Documents are split by the hash of
  ``relative_path:index`` in the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from qscale.errors import QscaleError, require

VAL_PERCENT = 5
USER_SUFFIXES = (".txt", ".jsonl", ".parquet")
_THIRD_PARTY = {"site-packages", "dist-packages"}


@dataclass(frozen=True)
class Corpus:
    """Train and validation documents plus a fingerprint of their content and split."""

    train: list[str]
    val: list[str]
    fingerprint: str


def _bucket(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100


def _is_val(key: str) -> bool:
    return _bucket(key) < VAL_PERCENT


def _python_files(root: Path) -> Iterator[Path]:
    """``.py`` files under ``root``, not descending into third-party package folders."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _THIRD_PARTY]
        yield from (Path(folder) / f for f in files if f.endswith(".py") and (Path(folder) / f).is_file())


def _stdlib_documents() -> Iterator[tuple[str, str]]:
    """(relative path, text) of the stdlib's ``.py`` files, sorted, deduplicated by content."""
    root = Path(sysconfig.get_paths()["stdlib"])
    require(root.is_dir(), f"standard library folder not found: {root}")
    seen = set()
    for path in sorted(_python_files(root)):
        rel = path.relative_to(root)
        data = path.read_bytes()
        digest = hashlib.sha256(data).digest()
        if digest in seen or not data.strip():
            continue
        seen.add(digest)
        yield rel.as_posix(), data.decode("utf-8", errors="replace")


def _text(path: Path) -> str:
    """A ``.txt`` file's text; a binary file (NUL bytes, not UTF-8) is refused, not tokenized as noise."""
    data = path.read_bytes()
    require(b"\x00" not in data, f"data file {path} is binary (NUL bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise QscaleError(f"data file {path} is not UTF-8 text (invalid byte at offset {e.start})") from None


def _read_file(path: Path, rel: str) -> list[tuple[str, str]]:
    try:
        if path.suffix == ".txt":
            return [(rel, _text(path))]
        if path.suffix == ".jsonl":
            texts = []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                if line.strip():
                    row = json.loads(line)
                    require(
                        isinstance(row, dict) and isinstance(row.get("text"), str),
                        f"{path}: line {i + 1} has no string 'text' field",
                    )
                    texts.append((f"{rel}:{i}", row["text"]))
            return texts
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        require("text" in table.column_names, f"{path}: parquet file has no 'text' column")
        return [(f"{rel}:{i}", t) for i, t in enumerate(table.column("text").to_pylist()) if isinstance(t, str)]
    except QscaleError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise QscaleError(f"cannot read data file {path}: {type(e).__name__}: {e}".splitlines()[0]) from e


def _user_documents(data: Path) -> list[tuple[str, str]]:
    require(data.exists(), f"data path does not exist: {data}")
    if data.is_file():
        require(data.suffix in USER_SUFFIXES, f"unsupported data file {data} (expected {', '.join(USER_SUFFIXES)})")
        files, root = [data], data.parent
    else:
        files, root = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix in USER_SUFFIXES), data
        require(bool(files), f"no {', '.join(USER_SUFFIXES)} files in data folder {data}")
    docs = [d for f in files for d in _read_file(f, f.relative_to(root).as_posix())]
    return [(k, t) for k, t in docs if t.strip()]


def _split(docs: Iterable[tuple[str, str]], max_files: int | None) -> tuple[list, list]:
    """Hash split; with ``max_files``, keep the first documents of each split in the 95:5 proportion."""
    n_val = None if max_files is None else max(1, round(max_files * VAL_PERCENT / 100))
    n_train = None if max_files is None else max(1, max_files - n_val)
    train, val = [], []
    for doc in docs:
        split, cap = (val, n_val) if _is_val(doc[0]) else (train, n_train)
        if cap is None or len(split) < cap:
            split.append(doc)
        if max_files is not None and len(train) >= n_train and len(val) >= n_val:
            break  # stop reading early: tests stay fast
    if not val and len(train) > 1:  # too few documents for the hash split: hold out the last one
        val = [train.pop()]
    if not val:  # a single document: hold out its last VAL_PERCENT of characters
        key, text = train[0]
        cut = len(text) * (100 - VAL_PERCENT) // 100
        train, val = [(key, text[:cut])], [(key + "#val", text[cut:])]
    return train, val


def load_corpus(data: Path | None = None, max_files: int | None = None) -> Corpus:
    """Read and split the corpus; ``max_files`` caps the number of documents (tests)."""
    require(max_files is None or max_files >= 2, f"max_files must be >= 2, got {max_files}")
    docs = iter(_stdlib_documents() if data is None else _user_documents(Path(data)))
    first = next(docs, None)
    require(first is not None, f"no text found in {data if data is not None else 'the standard library'}")
    train, val = _split(itertools.chain([first], docs), max_files)
    h = hashlib.sha256()
    for tag, split in (("train", train), ("val", val)):
        for key, text in split:
            h.update(f"{tag}\0{key}\0".encode())
            h.update(hashlib.sha256(text.encode()).digest())
    return Corpus([t for _, t in train], [t for _, t in val], h.hexdigest()[:16])
