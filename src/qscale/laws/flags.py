"""The edge of ``qscale predict``: inputs checked under their flag names, and extrapolation marks.

A fit records the range of every numeric input it saw (``ranges`` in ``qscale fit --json``; a QiD
study's ``fit.json`` records ``measured_D_range``); a prediction at, or a solution for, a value outside
that range is an extrapolation and says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from qscale.errors import QscaleError
from qscale.laws.forms import LawForm

FLAGS = {"N": "--N", "D": "--D", "P": "--bits", "G": "--G", "precision": "--precision"}


def check_flags(form: LawForm, inputs: Mapping[str, float | str]) -> None:
    """Every numeric input finite and within the law's domain, reported by its flag."""
    for name, value in inputs.items():
        if name == form.label_input and name not in form.log_inputs:
            continue
        flag, value = FLAGS.get(name, name), float(value)
        if name == "G" and value == 0 and "G" in form.greater_than:
            raise QscaleError(
                "--G 0 (one scale per output channel) has no group size in this law: pass the "
                "layer's input width instead, e.g. --G 4096 for a 4096-wide layer (a per-channel "
                "scale spans all its input columns)"
            )
        limit = form.greater_than.get(name, 0.0 if name in form.log_inputs else None)
        if not math.isfinite(value) or (limit is not None and value <= limit):
            why = f" (it must be > {limit:g})" if limit is not None else ""
            raise QscaleError(f"{flag} {value:g} is outside the law's domain{why}")


def flag_message(message: str) -> str:
    """A validation message about a data column, reworded to name the flag the user typed."""
    for name, flag in {**FLAGS, "value": "the threshold"}.items():
        message = message.replace(f"column {name!r} data row 1", flag)
    return message


def fitted_ranges(form: LawForm, data: Mapping[str, object]) -> dict[str, list[float]]:
    """``{input: [min, max]}`` of the numeric inputs a fit saw."""
    out = {}
    for c in form.inputs:
        try:
            x = np.asarray(data[c], dtype=float)
        except (KeyError, TypeError, ValueError):
            continue
        if x.size and np.isfinite(x).any():
            out[c] = [float(np.nanmin(x)), float(np.nanmax(x))]
    return out


def recorded_ranges(obj: Mapping[str, Any]) -> dict[str, list[float]]:
    """The fitted ranges a parameter file (a parsed JSON object) records (none for published sets)."""
    ranges = dict(obj.get("ranges") or {})
    if "D" not in ranges and obj.get("measured_D_range"):
        ranges["D"] = list(obj["measured_D_range"])
    return {k: [float(v[0]), float(v[1])] for k, v in ranges.items() if isinstance(v, (list, tuple)) and len(v) == 2}


def extrapolations(ranges: Mapping[str, list[float]], values: Mapping[str, object]) -> list[str]:
    """One note per value outside its fitted range, e.g. ``D = 38.8 is outside the fitted range 256–6,144``."""
    notes = []
    for name, value in values.items():
        if name in ranges and isinstance(value, (int, float)) and not ranges[name][0] <= value <= ranges[name][1]:
            lo, hi = ranges[name]
            notes.append(f"{name} = {value:.4g} is outside the fitted range {lo:,.4g}–{hi:,.4g}")
    return notes
