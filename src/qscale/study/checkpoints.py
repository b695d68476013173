"""Your own checkpoint suite: find HF causal-LM checkpoint folders, their training tokens D and size groups.

``--checkpoints PATH`` is a folder of checkpoint folders (``suite/<size>/step<N>`` or ``suite/step<N>``),
a glob, or a CSV manifest with a ``path`` column and optional ``size``, ``N`` and ``D`` columns (paths
relative to the CSV's folder). D comes, in order, from the manifest, from qscale's metadata
(``qscale.json``: ``tokens``), or from the folder name ``step<N>`` times ``--tokens-per-step`` (Pythia:
``step143000`` x 2,097,152 tokens, Biderman et al. 2023). Checkpoints of one model configuration form
one size (label: the manifest's ``size``, else their common parent folder's name, else the config).
N is counted on the model (non-embedding, :func:`qscale.models.count_params`) unless the manifest gives it.
"""

from __future__ import annotations

import csv
import glob
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from qscale.data.tokenizer import folder_tokenizer
from qscale.errors import QscaleError, require
from qscale.provenance import config_hash
from qscale.train.checkpoint import META

STEP = re.compile(r"step[-_]?(\d+)$")
_VOLATILE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "architectures"}


@dataclass(frozen=True)
class SuiteCheckpoint:
    """One checkpoint of a user's suite: folder, size label, training tokens D, optional given N."""

    path: str
    size: str
    D: int
    N: int | None = None
    tokenizer: str = ""


def _is_checkpoint(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file()


def _find(spec: str) -> tuple[list[Path], dict[Path, dict]]:
    """Checkpoint folders named by ``spec`` and, for a manifest, each folder's row."""
    path = Path(spec)
    if path.suffix.lower() == ".csv":
        require(path.is_file(), f"--checkpoints manifest does not exist: {path}")
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        require(rows and "path" in rows[0], f"manifest {path} needs a 'path' column (and optional size, N, D)")
        found = {}
        for i, r in enumerate(rows, start=2):
            p = Path(r["path"].strip())
            p = p if p.is_absolute() else path.parent / p
            require(_is_checkpoint(p), f"manifest {path} line {i}: not a checkpoint folder (no config.json): {p}")
            found[p] = r
        return list(found), found
    if any(c in spec for c in "*?["):
        hits = [Path(p) for p in sorted(glob.glob(spec))]
        return [p for p in hits if _is_checkpoint(p)], {}
    require(path.exists(), f"--checkpoints path does not exist: {path}")
    require(path.is_dir(), f"--checkpoints must be a folder, a glob or a .csv manifest: {path}")
    if _is_checkpoint(path):
        return [path], {}
    level1 = sorted(p for p in path.iterdir() if p.is_dir())
    return [p for p in level1 if _is_checkpoint(p)] + sorted(
        q for p in level1 if not _is_checkpoint(p) for q in p.iterdir() if _is_checkpoint(q)
    ), {}


def _number(row: dict, col: str, where: str) -> int | None:
    text = (row.get(col) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise QscaleError(f"{where}: column {col} must be a number, got {text!r}") from None
    require(value > 0 and value == int(value), f"{where}: column {col} must be a positive integer, got {text!r}")
    return int(value)


def _tokens(p: Path, row: dict, tokens_per_step: int | None) -> int:
    """D of one checkpoint: manifest, qscale metadata, or step number x tokens per step."""
    d = _number(row, "D", f"manifest row of {p}")
    if d is not None:
        return d
    meta = p / META
    if meta.is_file():
        try:
            return int(json.loads(meta.read_text())["tokens"])
        except (ValueError, KeyError, TypeError):
            raise QscaleError(f"cannot read the training tokens from {meta}") from None
    m = STEP.search(p.name)
    if m and tokens_per_step:
        return int(m.group(1)) * tokens_per_step
    if m:
        raise QscaleError(f"cannot derive D for {p}: pass --tokens-per-step (D = step {m.group(1)} x tokens per step)")
    raise QscaleError(
        f"cannot derive D for {p}: no qscale.json, no D column in a manifest, and the folder is not "
        "named step<N> (for --tokens-per-step)"
    )


def _arch(p: Path) -> tuple[str, str]:
    """(hash of the model configuration, a readable label) of a checkpoint folder."""
    try:
        cfg = json.loads((p / "config.json").read_text())
    except ValueError as e:
        raise QscaleError(f"cannot read {p / 'config.json'}: {e}") from None
    stable = {k: v for k, v in cfg.items() if k not in _VOLATILE}
    width = cfg.get("hidden_size", cfg.get("n_embd", "?"))
    depth = cfg.get("num_hidden_layers", cfg.get("n_layer", "?"))
    return config_hash(stable), f"{cfg.get('model_type', 'model')}-d{width}-L{depth}"


def discover(spec: str | Path, tokens_per_step: int | None = None) -> tuple[SuiteCheckpoint, ...]:
    """The checkpoints of ``spec`` grouped into sizes by model configuration, sorted by (size, D)."""
    require(tokens_per_step is None or tokens_per_step >= 1, f"--tokens-per-step must be >= 1, got {tokens_per_step}")
    folders, manifest = _find(str(spec))
    require(folders, f"no checkpoints found in {spec} (folders with a config.json)")
    groups: dict[str, list[Path]] = defaultdict(list)
    labels: dict[str, str] = {}
    for p in folders:
        h, label = _arch(p)
        given = (manifest.get(p, {}).get("size") or "").strip()
        key = f"size:{given}" if given else h
        groups[key].append(p)
        labels[key] = given or label
    parents = {k: {p.parent.name for p in ps} for k, ps in groups.items()}
    for k in groups:  # a size's own folder name (suite/pythia-70m/step1000) reads best
        if not k.startswith("size:") and len(parents[k]) == 1 and len(groups) > 1:
            name = next(iter(parents[k]))
            if sum(1 for v in parents.values() if name in v) == 1:
                labels[k] = name
    require(len(set(labels.values())) == len(labels), f"two model configurations share a size label: {labels}")
    out = []
    for k, ps in groups.items():
        for p in ps:
            tok = folder_tokenizer(p)
            require(tok is not None, f"checkpoint {p} has no tokenizer (tokenizer.json, or vocab.json + merges.txt)")
            row = manifest.get(p, {})
            out.append(
                SuiteCheckpoint(
                    str(p.resolve()),
                    labels[k],
                    _tokens(p, row, tokens_per_step),
                    _number(row, "N", f"manifest row of {p}"),
                    str(Path(tok).resolve()),
                )
            )
    seen = defaultdict(list)
    for c in out:
        seen[(c.size, c.D)].append(c.path)
    dup = [v for v in seen.values() if len(v) > 1]
    require(not dup, f"two checkpoints of one size have the same D: {', '.join(dup[0]) if dup else ''}")
    return tuple(sorted(out, key=lambda c: (c.size, c.D)))
