"""What a training run depends on, recorded in ``run.json`` and every checkpoint's ``qscale.json``:

* fingerprints of the data (corpus content and split), the tokenizer and the training config, so that a
  re-run on other data, another tokenizer or other options is refused instead of resumed;
* the parent checkpoint of a continued run (``train --model CKPT``): the tokens it had already seen, so
  that D counts them, and the tokenizer it was trained with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qscale.errors import QscaleError, require
from qscale.provenance import atomic_write_json, config_hash

META = "qscale.json"
_WHAT = {  # fingerprint -> (what differs, what to pass to resume)
    "data": ("data", "the same --data"),
    "tokenizer": ("tokenizer", "the same --tokenizer"),
    "config": ("config", "the same training options"),
}


def run_fingerprints(cfg, streams) -> dict[str, str]:
    """Fingerprints of the corpus, the tokenizer and the training config of a run."""
    return {"data": streams.data_fingerprint, "tokenizer": streams.tokenizer_hash, "config": config_hash(cfg)}


def check_resume(out_dir: Path, meta: dict) -> None:
    """Write ``out_dir/run.json`` for a new run; for an existing one, refuse any fingerprint mismatch."""
    path = Path(out_dir) / "run.json"
    if not path.is_file():
        atomic_write_json(path, meta)
        return
    try:
        old = json.loads(path.read_text())
        recorded = old.get("fingerprints") or {"config": old["config_hash"], "tokenizer": old["tokenizer_hash"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise QscaleError(f"{path} is corrupt: delete the run folder {out_dir} or choose another --out") from None
    for key, (what, flag) in _WHAT.items():
        have, want = recorded.get(key), meta["fingerprints"][key]
        require(
            have is None or have == want,
            f"{out_dir} holds a run with a different {what} (fingerprint {have}, now {want}): "
            f"re-run with {flag} to resume it, or choose another --out folder",
        )


@dataclass(frozen=True)
class Parent:
    """The qscale checkpoint a run continues from."""

    path: Path
    tokens: int  # training tokens it had seen
    tokenizer_hash: str | None


def parent_checkpoint(model: Path | None) -> Parent | None:
    """The qscale checkpoint at ``model`` (None for a fresh model or a plain Hugging Face folder)."""
    if model is None or not (Path(model) / META).is_file():
        return None
    try:
        meta = json.loads((Path(model) / META).read_text())
        return Parent(Path(model), int(meta["tokens"]), meta.get("tokenizer_hash"))
    except (ValueError, KeyError, TypeError):
        raise QscaleError(f"{Path(model) / META} is corrupt: it records no token count") from None


def check_parent_tokenizer(parent: Parent | None, tokenizer_hash: str) -> None:
    """A continued run must use the tokenizer its parent checkpoint was trained with."""
    if parent is None or parent.tokenizer_hash in (None, tokenizer_hash):
        return
    raise QscaleError(
        f"checkpoint {parent.path} was trained with another tokenizer: omit --tokenizer to use "
        f"{parent.path / 'tokenizer.json'}, or pass the tokenizer it was trained with"
    )
