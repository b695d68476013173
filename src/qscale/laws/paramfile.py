"""What ``qscale predict --params`` reads: a published set, a ``qscale fit --json`` file, or a study's fit.json.

A fit file holds one law (``law``, ``params`` and, when bootstrapped, ``bootstrap`` samples). A study's
``report/fit.json`` holds one fitted law per method (``methods: {name: {params, bootstrap, error, ...}}``,
law named by ``law_name``); methods the study could not fit carry ``error`` instead of parameters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from qscale.errors import QscaleError
from qscale.laws.flags import recorded_ranges
from qscale.laws.intervals import Scatter
from qscale.laws.published import PUBLISHED
from qscale.laws.registry import LAWS
from qscale.laws.uncertainty import LawSamples

STUDY_KEYS = ("methods", "fits")  # QiD study: methods; QAT study: fits


@dataclass
class ParamEntry:
    """One law's parameters (and bootstrap record, if any) from a parameter file."""

    params: dict
    bootstrap: Mapping[str, object] | None = None
    law: str | None = None
    scatter: Mapping[str, object] | None = None  # residual scatter: prediction intervals (qscale.laws.intervals)
    ci: Mapping[str, object] | None = None  # the parameters' 95% intervals, if recorded

    def samples(self, law: str, where: str) -> LawSamples | None:
        return LawSamples.from_record(law, self.params, self.bootstrap, where) if self.bootstrap else None

    def scatter_of(self, where: str) -> Scatter | None:
        return Scatter.from_record(self.scatter, where)


@dataclass
class ParamFile:
    """Laws by name (``""`` for a single law), the file's law name, source text and fitted ranges."""

    law: str | None
    source: str
    ranges: dict
    entries: dict[str, ParamEntry]
    unfitted: dict[str, str] = field(default_factory=dict)  # study methods without a fit: the reason
    fp_losses: list[dict] = field(default_factory=list)  # a QiD study's measured full-precision losses
    published: str | None = None  # the published set's name, when it is one


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked(params: Mapping, where: str) -> dict:
    """Every parameter a number, or an object of numbers (per-label parameters such as effective_params')."""
    for name, value in params.items():
        values = value.values() if isinstance(value, Mapping) else [value]
        bad = next((v for v in values if not _number(v)), None)
        if bad is not None or not values:
            raise QscaleError(f"{where}: parameter {name!r} is {json.dumps(value)}, not a number")
    return dict(params)


def _law_name(obj: Mapping) -> str | None:
    for key in ("law_name", "law"):
        if isinstance(obj.get(key), str) and obj[key] in LAWS:
            return obj[key]
    return None


def _study(obj: Mapping, path: Path) -> ParamFile:
    key = next(k for k in STUDY_KEYS if k in obj)
    items = obj[key]
    if not isinstance(items, Mapping):
        raise QscaleError(f"{path}: '{key}' must be an object of fitted laws")
    entries, unfitted = {}, {}
    for name, e in items.items():
        if not isinstance(e, Mapping):
            raise QscaleError(f"{path}: entry {name!r} of '{key}' must be an object")
        if isinstance(e.get("params"), Mapping):
            params = _checked(e["params"], f"{path} ({name})")
            entries[str(name)] = ParamEntry(params, e.get("bootstrap"), _law_name(e), e.get("scatter"), e.get("ci"))
        else:
            unfitted[str(name)] = str(e.get("error") or "not fitted")
    return ParamFile(_law_name(obj), str(path), recorded_ranges(obj), entries, unfitted, _fp_losses(obj))


def _fp_losses(obj: Mapping) -> list[dict]:
    rows = obj.get("fp_losses")
    if not isinstance(rows, list):
        return []
    keys = ("N", "D", "loss_fp")
    return [dict(r) for r in rows if isinstance(r, Mapping) and all(_number(r.get(k)) for k in keys)]


def load_params(spec: str) -> ParamFile:
    """A published set's name or a JSON file from ``qscale fit --json`` or a study's report."""
    if spec in PUBLISHED:
        pub = PUBLISHED[spec]
        ranges = {k: list(v) for k, v in pub.ranges.items()}
        return ParamFile(pub.law_name, pub.citation, ranges, {"": ParamEntry(dict(pub.params))}, published=spec)
    path = Path(spec)
    if not path.is_file():
        raise QscaleError(f"--params {spec!r} is neither a published set ({', '.join(sorted(PUBLISHED))}) nor a file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QscaleError(
            f"--params {path}: not a JSON file from 'qscale fit --json' or a study ({type(e).__name__})"
        ) from None
    if not isinstance(obj, dict):
        raise QscaleError(f"{path}: expected a JSON object of parameters")
    if any(k in obj for k in STUDY_KEYS):
        return _study(obj, path)
    params = obj.get("params", obj)
    if not isinstance(params, dict):
        raise QscaleError(f"{path}: 'params' must be an object")
    law = obj.get("law") if isinstance(obj.get("law"), str) else None
    entry = ParamEntry(_checked(params, str(path)), obj.get("bootstrap"), None, obj.get("scatter"), obj.get("ci"))
    return ParamFile(law, str(path), recorded_ranges(obj), {"": entry}, fp_losses=_fp_losses(obj))
