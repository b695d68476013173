"""Prediction intervals: where a *new measurement* at an input should fall, not only the law's mean there.

A fitted law has two kinds of uncertainty about a new point (SPEC §5, validation). The bootstrap spread of
its parameters (``qscale.laws.uncertainty``) gives the interval on the *mean law*, which shrinks as points
are added. A new measurement also scatters about the law: the fit's residual scatter in log space (misfit of
the form plus the measurement noise of the fitted points) and the new point's own measurement error. The
*prediction interval* adds both to the parameter spread:

    log y_new = log ŷ_s + e,   e ~ s_model · t_(n−p)  (+ the point's own noise, SE/y, when known)

where ``log ŷ_s`` runs over the bootstrap samples. Its quantiles are those of the mixture of the samples'
(scaled Student-t) distributions, solved exactly. ``s_total² = Σ r² / (n − p)`` is the residual variance
of the fit (r = log residuals); when each fitted point's standard error is known, ``s_model²`` is the part
that is not measurement noise (the Paule-Mandel τ², :func:`fit_scatter`), and a point of known SE adds its
own ``(SE/y)²``. Without a point's SE (a prediction at a new input) the whole ``s_total`` is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.stats import t as student_t

from qscale.errors import QscaleError
from qscale.laws.data import check_inputs
from qscale.laws.uncertainty import MIN_SAMPLES, Estimate, LawSamples, _summarise


@dataclass(frozen=True)
class Scatter:
    """Residual scatter of a fit in log space: total (dof-corrected), the part beyond measurement noise."""

    sd_log: float  # sqrt(Σ r² / (n − p))
    sd_model: float  # the scatter beyond measurement noise (Paule-Mandel); = sd_log when SEs are unknown
    dof: int  # n − p
    mean_meas_var: float | None = None  # mean (SE/y)² of the fitted points, when known

    def variance(self, rel_se: float | None = None) -> float:
        """Log-space variance of a new point about the law: its own (SE/y)² if known, else the typical one."""
        if rel_se is None or not np.isfinite(rel_se):
            return self.sd_log**2
        return self.sd_model**2 + float(rel_se) ** 2

    def as_dict(self) -> dict[str, object]:
        return {
            "sd_log": self.sd_log,
            "sd_model": self.sd_model,
            "dof": self.dof,
            "mean_meas_var": self.mean_meas_var,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None, where: str = "the parameter file") -> Scatter | None:
        if not record:
            return None
        try:
            mv = record.get("mean_meas_var")
            out = cls(
                float(record["sd_log"]),
                float(record["sd_model"]),
                int(record["dof"]),
                None if mv is None else float(mv),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise QscaleError(f"{where}: malformed scatter record ({type(e).__name__}: {e})") from None
        if not (np.isfinite(out.sd_log) and out.sd_log >= 0 and out.sd_model >= 0 and out.dof >= 1):
            raise QscaleError(f"{where}: scatter record needs sd_log, sd_model >= 0 and dof >= 1")
        return out


def fit_scatter(log_residuals: np.ndarray, n_params: int, rel_se: np.ndarray | None = None) -> Scatter:
    """The :class:`Scatter` of a fit from its log residuals (and the fitted points' SE/y, when known).

    With SEs, the scatter beyond measurement noise is the Paule-Mandel estimate (DerSimonian & Kacker 2007):
    the τ² at which Σ r²/((SE/y)² + τ²) equals its expectation n − p (0 when the SEs explain all the scatter).
    """
    r = np.asarray(log_residuals, dtype=float)
    dof = max(1, r.size - n_params)
    total = float((r**2).sum() / dof)
    if rel_se is None:
        return Scatter(float(np.sqrt(total)), float(np.sqrt(total)), dof)
    v = np.asarray(rel_se, dtype=float) ** 2

    def excess(tau2: float) -> float:
        return float((r**2 / (v + tau2)).sum()) - dof

    tau2 = 0.0 if excess(0.0) <= 0 or total == 0 else float(brentq(excess, 0.0, total, xtol=1e-14))
    return Scatter(float(np.sqrt(total)), float(np.sqrt(tau2)), dof, float(v.mean()))


def mixture_interval(centres: np.ndarray, sd: float, dof: int, level: float) -> tuple[float, float]:
    """Quantiles (1 ∓ level)/2 of the equal mixture of ``centres + sd · t_dof`` (log space)."""
    m = np.asarray(centres, dtype=float)
    if sd <= 0:
        lo = np.percentile(m, 100 * (1 - level) / 2, method="lower")
        hi = np.percentile(m, 100 * (1 + level) / 2, method="higher")
        return float(lo), float(hi)
    width = float(student_t.ppf(1 - (1 - level) / 4, dof)) * sd + 1e-12

    def quantile(q: float) -> float:
        def f(x: float) -> float:
            return float(student_t.cdf((x - m) / sd, dof).mean()) - q

        return float(brentq(f, m.min() - 2 * width, m.max() + 2 * width, xtol=1e-10))

    return quantile((1 - level) / 2), quantile((1 + level) / 2)


def prediction_interval(
    law: LawSamples, scatter: Scatter, inputs: Mapping[str, object], rel_se: float | None = None
) -> Estimate:
    """The interval a new measurement at ``inputs`` should fall in (parameters + scatter + its own noise)."""
    point, values = law_values(law, inputs)
    return _prediction(float(point[0]), values[:, 0], scatter, rel_se, law.level)


def mean_interval(law: LawSamples, inputs: Mapping[str, object]) -> Estimate:
    """The bootstrap interval on the mean law at ``inputs`` (what ``predict_interval`` gives)."""
    point, values = law_values(law, inputs)
    return _summarise(float(point[0]), values[:, 0], law.level)


def intervals_at(
    law: LawSamples, scatter: Scatter, inputs: Mapping[str, object], rel_se: np.ndarray | None = None
) -> tuple[list[Estimate], list[Estimate]]:
    """Prediction and mean-law intervals at many points at once (``inputs``: columns of equal length)."""
    point, values = law_values(law, inputs)
    rel = [None] * point.size if rel_se is None else list(np.asarray(rel_se, dtype=float))
    pred = [_prediction(float(point[i]), values[:, i], scatter, rel[i], law.level) for i in range(point.size)]
    mean = [_summarise(float(point[i]), values[:, i], law.level) for i in range(point.size)]
    return pred, mean


def _prediction(point: float, values: np.ndarray, scatter: Scatter, rel_se: float | None, level: float) -> Estimate:
    ok = values[np.isfinite(values) & (values > 0)]
    n_failed = int(values.size - ok.size)
    if ok.size < MIN_SAMPLES:
        return Estimate(point, float("nan"), float("nan"), level, int(values.size), n_failed)
    sd = float(np.sqrt(scatter.variance(rel_se)))
    lo, hi = mixture_interval(np.log(ok), sd, scatter.dof, level)
    # The mean-law interval takes outward nearest ranks; with a scatter small beside the parameter spread
    # the mixture's (smooth) quantile can land just inside them. A new measurement is never surer than the
    # mean law, so the prediction interval holds the mean-law interval.
    mean = _summarise(point, values, level)
    lo_, hi_ = min(float(np.exp(lo)), mean.lo), max(float(np.exp(hi)), mean.hi)
    return Estimate(point, lo_, hi_, level, int(values.size), n_failed)


def law_values(law: LawSamples, inputs: Mapping[str, object]) -> tuple[np.ndarray, np.ndarray]:
    """The law's point prediction (n,) and its value under every bootstrap sample (S, n) at ``inputs``."""
    form = law.form()
    data = check_inputs(form, inputs)
    X = form.features(data)
    point = np.exp(form._log_predict(form.to_internal(law.params), X))
    flat = [form.flatten(p) for p in law.sample_params()]
    thetas = [np.array([p.to_internal(f[p.name]) for p in form.params]) for f in flat]
    with np.errstate(all="ignore"):
        values = np.array([np.exp(form._log_predict(t, X)) for t in thetas])
    return point, values.reshape(len(thetas), point.size)
