"""Validation of a law's inputs and target: every bad value is reported with its column and row.

Rows are numbered as a user counts them in a file: ``data row 1`` is the first row under the header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from qscale.errors import QscaleError

if TYPE_CHECKING:  # annotations only: forms imports this module
    from qscale.laws.forms import LawForm


def data_row(i: int) -> str:
    """The 0-based index ``i`` as a user numbers rows: ``data row 1`` is the first row under the header."""
    return f"data row {int(i) + 1}"


def label_of(value: object) -> str:
    """Canonical string label of a precision value: 16, 16.0 and "16" are all "16"."""
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode()
    try:
        return f"{float(value):g}"  # type: ignore[arg-type]  # any value: a non-number raises, caught below
    except (TypeError, ValueError):
        return str(value).strip()


def labels_of(column: object) -> np.ndarray:
    """Canonical labels (:func:`label_of`) of a column's values, as a 1-D object array."""
    return np.array([label_of(v) for v in np.asarray(column, dtype=object).ravel()], dtype=object)


def _numeric(name: str, values: object) -> np.ndarray:
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        arr = np.asarray(values, dtype=object).ravel()
        for i, v in enumerate(arr):
            try:
                float(v)
            except (TypeError, ValueError):
                raise QscaleError(f"column {name!r} {data_row(i)}: {v!r} is not a number") from None
        raise


def check_column(name: str, values: object, greater_than: float | None = None) -> np.ndarray:
    """A 1-D float column with finite values (and all > ``greater_than`` when given)."""
    x = _numeric(name, values).ravel()
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise QscaleError(f"column {name!r} {data_row(bad[0])}: value {x[bad[0]]} is not finite")
    if greater_than is not None:
        bad = np.flatnonzero(x <= greater_than)
        if bad.size:
            why = "its logarithm is taken" if greater_than == 0 else "the law needs it"
            raise QscaleError(
                f"column {name!r} {data_row(bad[0])}: value {x[bad[0]]:g} must be > {greater_than:g} ({why})"
            )
    return x


def check_inputs(form: LawForm, inputs: Mapping[str, object]) -> dict[str, np.ndarray]:
    """The form's input columns as 1-D arrays of equal length (scalars broadcast), validated."""
    missing = [c for c in form.inputs if c not in inputs]
    if missing:
        have = ", ".join(sorted(inputs)) or "none"
        raise QscaleError(f"law {form.name!r} needs column(s) {', '.join(missing)} (have: {have})")
    raw = {c: np.asarray(inputs[c], dtype=object if c == form.label_input else None) for c in form.inputs}
    try:
        shape = np.broadcast_shapes(*(a.shape for a in raw.values()))
    except ValueError:
        raise QscaleError(f"law {form.name!r}: input columns have different lengths") from None
    out: dict[str, np.ndarray] = {}
    for c, a in raw.items():
        a = np.broadcast_to(a, shape).ravel()
        if c == form.label_input and form.labels is not None:
            labs = labels_of(a)
            unknown = np.flatnonzero(~np.isin(labs, np.array(form.labels, dtype=object)))
            if unknown.size:
                i = unknown[0]
                raise QscaleError(
                    f"column {c!r} {data_row(i)}: label {labs[i]!r} has no fitted parameter "
                    f"(known: {', '.join(form.labels)})"
                )
        if c == form.label_input and c not in form.log_inputs:
            out[c] = a
            continue
        limit = form.greater_than.get(c, 0.0 if c in form.log_inputs else None)
        out[c] = check_column(c, a, limit)
    return out


def check_target(name: str, values: object) -> np.ndarray:
    """Target values: finite and > 0 (the fit works on log residuals)."""
    return check_column(name, values, greater_than=0.0)
