"""Held-out validation of a fitted law: does it predict points it did not see? (SPEC §5, validation.)

Refit the law without the rows at the largest N (or the largest D), predict those rows, and report the
median and max |relative error| (predicted/observed − 1), how many held-out points fall inside the 95%
*prediction* interval (bootstrap parameter spread + residual scatter + the point's own measurement error,
``qscale.laws.intervals``) and inside the narrower interval on the mean law, and the (observed, predicted)
pairs for a parity plot. Chen et al. 2025 hold out their largest model the same way (SPEC §2).

Rows are put in a canonical order before fitting, so a study's report and ``qscale fit --validate`` on the
same points (in whatever order a file lists them) give the same numbers for the same seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qscale.errors import ConvergenceError, QscaleError
from qscale.laws.bootstrap import bootstrap_problem
from qscale.laws.data import labels_of
from qscale.laws.fit import fit_problem, get_form, make_problem
from qscale.laws.forms import LawForm
from qscale.laws.intervals import fit_scatter, intervals_at
from qscale.laws.uncertainty import MIN_SAMPLES, LawSamples

HOLDS = ("N", "D")


@dataclass
class Validation:
    """What one held-out check found (``error`` set, and the rest empty, when it could not be run)."""

    hold: str
    held_out_value: float = float("nan")
    n_train: int = 0
    n_test: int = 0
    n_skipped: int = 0  # held-out rows whose label never occurs in training
    median_abs_rel_error: float = float("nan")
    max_abs_rel_error: float = float("nan")
    covered: int = 0  # held-out points inside the 95% prediction interval
    covered_mean: int = 0  # ... inside the (narrower) interval on the mean law
    level: float = 0.95
    scatter: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    pairs: list[dict] = field(default_factory=list)
    error: str | None = None

    @property
    def coverage(self) -> float:
        return self.covered / self.n_test if self.n_test else float("nan")

    def as_dict(self) -> dict[str, object]:
        if self.error:
            return {"hold": self.hold, "error": self.error}
        return {
            "hold": self.hold,
            "held_out_value": self.held_out_value,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "n_skipped": self.n_skipped,
            "median_abs_rel_error": self.median_abs_rel_error,
            "max_abs_rel_error": self.max_abs_rel_error,
            "covered": self.covered,
            "covered_mean": self.covered_mean,
            "coverage": self.coverage,
            "level": self.level,
            "scatter": self.scatter,
            "params": self.params,
            "pairs": self.pairs,
        }

    def text(self) -> str:
        """One line: ``largest N (1.2e+06) held out, 12 pts: median |rel. err| 8.1%, max 20%, 95% PI holds 11/12``."""
        if self.error:
            return f"largest {self.hold} held out: {self.error}"
        return (
            f"largest {self.hold} ({self.held_out_value:.3g}) held out, {self.n_test} pts: median |rel. err| "
            f"{self.median_abs_rel_error:.1%}, max {self.max_abs_rel_error:.1%}; {self.level:.0%} prediction "
            f"interval holds {self.covered}/{self.n_test} (mean-law interval {self.covered_mean}/{self.n_test})"
        )


def _canonical(rows: Mapping[str, Any], keys: Sequence[str]) -> dict[str, np.ndarray]:
    n = len(np.asarray(rows[keys[0]]))
    cols = {c: np.asarray(v) for c, v in rows.items() if np.ndim(v) == 1 and len(v) == n}
    order = np.lexsort([np.asarray([str(x) for x in cols[k]]) if cols[k].dtype == object else cols[k] for k in keys])
    return {c: v[order] for c, v in cols.items()}


def validate_law(
    points: Mapping[str, object],
    law: LawForm | str,
    hold: str = "N",
    target: str | None = None,
    se_column: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
    huber_delta: float = 1e-3,
    level: float = 0.95,
) -> Validation:
    """Fit ``law`` on ``points`` without the rows at the largest ``hold`` and judge it on those rows.

    ``points`` are the rows a fit may use (already screened for noise). ``se_column`` (default
    ``<target>_se`` when present) holds each point's measurement standard error. Raises
    :class:`~qscale.errors.QscaleError` when the check cannot be run (one distinct value, too few rows).
    """
    form = get_form(law)
    target = target or form.target
    if hold not in HOLDS or hold not in form.inputs:
        raise QscaleError(f"validation holds out the largest N or D of the law's inputs, not {hold!r}")
    if n_boot < MIN_SAMPLES:
        raise QscaleError(f"validation needs >= {MIN_SAMPLES} bootstrap resamples, got {n_boot}")
    for c in (hold, target):
        if c not in points:
            raise QscaleError(f"column {c!r} not found (have: {', '.join(sorted(points))})")
    se_column = se_column or (f"{target}_se" if f"{target}_se" in points else None)
    rows = _canonical(points, [target, *[c for c in form.inputs if c in points]])
    x = np.asarray(rows[hold], dtype=float)
    top = float(np.nanmax(x))
    test = x == top
    if test.all():
        raise QscaleError(f"validation needs at least two distinct values of {hold}")
    train = {c: v[~test] for c, v in rows.items()}
    for c in form.inputs:  # one value of an input in the fit leaves its exponent free: no test away from that value
        if c not in train or c == form.label_input:
            continue
        seen = np.unique(np.asarray(train[c], dtype=float))
        if seen.size < 2 and not np.all(np.asarray(rows[c], dtype=float)[test] == seen[0]):
            raise QscaleError(f"without the largest {hold}, the fit has one value of {c}: its exponent is not fitted")
    problem = make_problem(form, train, target, huber_delta)
    fit = fit_problem(problem, target=target)
    boot = bootstrap_problem(problem, fit, n_boot, seed, level)
    if len(boot.samples) < MIN_SAMPLES:
        raise ConvergenceError(f"only {len(boot.samples)} bootstrap refits converged")
    y_train = np.exp(problem.y)
    rel_train = None if se_column is None else np.asarray(train[se_column], dtype=float) / y_train
    resid = problem.form._log_predict(fit.theta, problem.X) - problem.y
    scatter = fit_scatter(resid, len(problem.form.params), rel_train)
    if form.label_input:
        test &= np.isin(labels_of(rows[form.label_input]), list(set(labels_of(train[form.label_input]))))
    n_skipped = int((x == top).sum() - test.sum())
    out = Validation(hold, top, int((~(x == top)).sum()), int(test.sum()), n_skipped, level=level)
    out.scatter, out.params = scatter.as_dict(), dict(fit.params)
    if not test.any():
        return out
    held = {c: v[test] for c, v in rows.items()}
    observed = np.asarray(held[target], dtype=float)
    rel_test = None if se_column is None else np.asarray(held[se_column], dtype=float) / observed
    law_samples = LawSamples(law, fit.params, tuple(boot.names), boot.samples, level)  # type: ignore[arg-type]
    pis, cis = intervals_at(law_samples, scatter, {c: held[c] for c in form.inputs}, rel_test)
    predicted = np.array([e.value for e in pis])
    rel = predicted / observed - 1.0
    out.median_abs_rel_error = float(np.median(np.abs(rel)))
    out.max_abs_rel_error = float(np.max(np.abs(rel)))
    inside = [bool(p.lo <= o <= p.hi) for p, o in zip(pis, observed, strict=True)]
    out.covered = int(sum(inside))
    out.covered_mean = int(sum(bool(c.lo <= o <= c.hi) for c, o in zip(cis, observed, strict=True)))
    out.pairs = [
        {
            **{c: _plain(held[c][i]) for c in form.inputs},
            "observed": float(observed[i]),
            "predicted": float(predicted[i]),
            "pi": [pis[i].lo, pis[i].hi],
            "ci_mean": [cis[i].lo, cis[i].hi],
            "covered": inside[i],
        }
        for i in range(observed.size)
    ]
    return out


def validate_all(points: Mapping[str, object], law: LawForm | str, holds: Sequence[str] = HOLDS, **kw) -> dict:
    """``{hold: Validation.as_dict()}`` for each of ``holds``; a check that cannot run records its error."""
    out = {}
    for h in holds:
        try:
            out[h] = validate_law(points, law, h, **kw).as_dict()
        except (QscaleError, ConvergenceError) as e:
            out[h] = Validation(h, error=str(e)).as_dict()
    return out


def _plain(v: object) -> object:
    return v.item() if isinstance(v, np.generic) else v
