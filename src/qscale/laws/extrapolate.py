"""Extrapolation check: fit on all but the largest N (or D), predict the held-out points.

The relative error on the held-out points is the number that says whether to trust a prediction beyond
the data (Chen et al. 2025 hold out their largest model the same way; SPEC §2).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qscale.errors import QscaleError
from qscale.laws.data import labels_of
from qscale.laws.fit import fit_law, get_form
from qscale.laws.forms import LawForm


def extrapolation_check(
    law: LawForm | str,
    data: Mapping[str, object],
    target: str | None = None,
    hold_out: str = "N",
    huber_delta: float = 1e-3,
) -> dict[str, object]:
    """Fit without the rows at the largest ``hold_out`` value and report relative errors on them.

    Returns hold_out, held_out_value, n_train, n_test, rel_errors (predicted/observed − 1, per held-out
    row), mean_abs_rel_error, max_abs_rel_error and the training fit's params. Held-out rows whose
    precision label never occurs in training are skipped (counted in n_skipped).
    """
    form = get_form(law)
    target = target or form.target
    if hold_out not in form.inputs:
        raise QscaleError(f"hold_out must be one of the law's inputs ({', '.join(form.inputs)}), got {hold_out!r}")
    if hold_out not in data or target not in data:
        raise QscaleError(f"column {hold_out if hold_out not in data else target!r} not found")
    x = np.asarray(data[hold_out], dtype=float)
    top = float(np.nanmax(x))
    test = x == top
    if test.all():
        raise QscaleError(f"extrapolation check needs at least two distinct values of {hold_out}")
    columns = [c for c in data if np.asarray(data[c]).shape == (len(x),)]
    train = {c: np.asarray(data[c])[~test] for c in columns}
    fit = fit_law(form, train, target, huber_delta)
    if form.label_input:
        known = set(labels_of(train[form.label_input]))
        test &= np.isin(labels_of(data[form.label_input]), list(known))
    n_skipped = int((x == top).sum() - test.sum())
    held = {c: np.asarray(data[c])[test] for c in columns}
    rel = fit.predict(held) / np.asarray(held[target], dtype=float) - 1.0 if test.any() else np.zeros(0)
    return {
        "hold_out": hold_out,
        "held_out_value": top,
        "n_train": int((~(x == top)).sum()),
        "n_test": int(test.sum()),
        "n_skipped": n_skipped,
        "rel_errors": rel.tolist(),
        "mean_abs_rel_error": float(np.abs(rel).mean()) if rel.size else float("nan"),
        "max_abs_rel_error": float(np.abs(rel).max()) if rel.size else float("nan"),
        "params": fit.params,
    }
