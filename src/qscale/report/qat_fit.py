"""Fitting the QAT law per scheme (Chen et al. 2025, arXiv 2505.14302; SPEC §2) for the QAT report: parameters,
bootstrap 95% intervals and samples, the residual scatter (prediction intervals, ``qscale.laws.intervals``) and,
on the held-out δ, the held-out validation (largest N, then largest D, held out: ``qscale.laws.validate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qscale.errors import ConvergenceError, QscaleError
from qscale.evaluate.noise import NoisePolicy
from qscale.laws import bootstrap_problem, fit_problem, make_problem
from qscale.laws.intervals import fit_scatter
from qscale.laws.uncertainty import MIN_SAMPLES, samples_record
from qscale.laws.validate import validate_all
from qscale.report.qat_law import PARAMS, law_name

MIN_FIT_POINTS = 6


@dataclass
class SchemeFit:
    """The QAT law fitted to one scheme's points (metric ``delta`` or ``delta_train``), or why not."""

    scheme: str
    metric: str
    n_rows: int
    n_excluded: int
    n_nonpositive: int
    params: dict[str, float] | None = None
    ci: dict[str, tuple[float, float]] | None = None
    stats: dict = field(default_factory=dict)
    error: str | None = None
    law_name: str = "qat"
    bootstrap: dict | None = None  # bootstrap parameter samples: what ``qscale predict`` turns into intervals
    scatter: dict | None = None
    validation: dict | None = None  # held-out δ only: {"N": ..., "D": ...}


def fit_scheme(
    rows: list[dict], scheme: str, metric: str, n_boot: int, seed: int, policy: NoisePolicy = NoisePolicy()
) -> SchemeFit:
    """Fit the QAT law to one scheme's rows on ``delta`` (noise policy) or ``delta_train`` (δ > 0)."""
    y = np.array([r[metric] for r in rows], dtype=np.float64)
    keep = policy.keep(y, np.array([r["delta_se"] for r in rows])) if metric == "delta" else np.isfinite(y) & (y > 0)
    f = SchemeFit(scheme, metric, len(rows), int((~keep).sum()), int((y <= 0).sum()))
    data = {
        "N": np.array([r["N"] for r in rows], dtype=np.float64)[keep],
        "D": np.array([r["D"] for r in rows], dtype=np.float64)[keep],
        "G": np.array([r["G_eff"] for r in rows], dtype=np.float64)[keep],
        "delta": y[keep],
    }
    if metric == "delta":
        data["delta_se"] = np.array([r["delta_se"] for r in rows], dtype=np.float64)[keep]
    distinct = {c: len(set(data[c].tolist())) for c in ("N", "D", "G")}
    if keep.sum() < MIN_FIT_POINTS or min(distinct.values()) < 2:
        f.error = (
            f"not fitted: {int(keep.sum())} usable points (need >= {MIN_FIT_POINTS}) with distinct "
            f"N/D/G counts {distinct} (need >= 2 each)"
        )
        return f
    f.law_name = law_name(scheme)
    try:
        problem = make_problem(f.law_name, data, "delta")
        fit = fit_problem(problem, target="delta")
        f.params = {p: float(fit.params[p]) for p in PARAMS}
        f.stats = {"n_points": fit.n_points, "r2_log": fit.r2_log, "rmse_log": fit.rmse_log, "converged": fit.converged}
        resid = problem.form._log_predict(fit.theta, problem.X) - problem.y
        rel_se = data["delta_se"] / data["delta"] if "delta_se" in data else None
        f.scatter = fit_scatter(resid, len(problem.form.params), rel_se).as_dict()
        if n_boot:
            boot = bootstrap_problem(problem, fit, n_boot, seed)
            f.ci = {p: tuple(map(float, v)) for p, v in boot.ci().items() if p in PARAMS}
            f.bootstrap = samples_record(boot)
    except (ConvergenceError, QscaleError) as e:
        f.params, f.error = None, f"fit failed: {e}"
        return f
    if metric == "delta":
        f.validation = validate_all(data, f.law_name, target="delta", n_boot=max(n_boot, MIN_SAMPLES), seed=seed)
    return f
