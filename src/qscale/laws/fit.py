"""Robust fitting of a law form (Hoffmann et al. 2022, approach 3; Besiroglu et al. 2024; SPEC §5).

Minimise Σ_i w_i·Huber_δ(log ŷ_i − log y_i) (δ = 1e-3 by default) with L-BFGS-B in the form's internal
coordinates. The whole grid of starting points is scored first and L-BFGS-B runs from the ``n_starts``
best of them (through smoother Huber losses first, see ``_from_start``); the best converged optimum of
the requested objective is kept. A fit that does not converge raises
:class:`~qscale.errors.ConvergenceError` saying why in words instead of returning numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from qscale.errors import ConvergenceError, QscaleError
from qscale.laws.data import check_inputs, check_target
from qscale.laws.forms import LawForm, Params
from qscale.laws.registry import get_law


@contextlib.contextmanager
def single_thread_blas() -> Iterator[None]:
    """Run L-BFGS-B's tiny BLAS calls on one thread: multi-threaded OpenBLAS spins when the cores
    are shared and makes each iteration ~100x slower. Needs the optional ``threadpoolctl``."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@dataclass
class Problem:
    """A form bound to validated data: features ``X`` and log targets ``y``."""

    form: LawForm
    X: dict[str, np.ndarray]
    y: np.ndarray
    huber_delta: float = 1e-3

    @property
    def n(self) -> int:
        return len(self.y)

    def objective(self, theta: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """(Σ w·Huber_δ(r) / δ, gradient); dividing by δ keeps the optimiser's tolerances meaningful."""
        d = self.huber_delta
        r = self.form._log_predict(theta, self.X) - self.y
        if not np.all(np.isfinite(r)):
            return 1e30, np.zeros_like(theta)
        a = np.abs(r)
        h = np.where(a <= d, 0.5 * r * r / d, a - 0.5 * d)
        psi = np.clip(r, -d, d) / d
        if weights is not None:
            h, psi = h * weights, psi * weights
        J = self.form._log_jacobian(theta, self.X)
        if J is None:
            return float(h.sum()), _fd_gradient(self, theta, weights)
        return float(h.sum()), J.T @ psi


def _value_only(problem: Problem, theta: np.ndarray, weights: np.ndarray | None) -> float:
    d = problem.huber_delta
    r = problem.form._log_predict(theta, problem.X) - problem.y
    if not np.all(np.isfinite(r)):
        return 1e30
    a = np.abs(r)
    h = np.where(a <= d, 0.5 * r * r / d, a - 0.5 * d)
    return float((h if weights is None else h * weights).sum())


def _fd_gradient(problem: Problem, theta: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Central differences, for forms without an analytic Jacobian (user forms)."""
    g = np.empty_like(theta)
    for j in range(len(theta)):
        step = 1e-6 * max(1.0, abs(theta[j]))
        e = np.zeros_like(theta)
        e[j] = step
        g[j] = (_value_only(problem, theta + e, weights) - _value_only(problem, theta - e, weights)) / (2 * step)
    return g


def _plain(status: int) -> str:
    """L-BFGS-B's exit status in words (its raw message names Fortran internals)."""
    return {0: "converged", 1: "stopped at the iteration limit", 2: "stopped: the line search found no descent"}.get(
        status, f"stopped (L-BFGS-B status {status})"
    )


@dataclass
class Optimum:
    theta: np.ndarray
    value: float  # scaled objective (Σ Huber / δ)
    converged: bool
    message: str


def minimise(problem: Problem, start: np.ndarray, weights: np.ndarray | None = None, maxiter: int = 2000) -> Optimum:
    """L-BFGS-B from ``start``. A line-search stop counts as converged only if a fresh restart
    from that point cannot lower the objective (the Huber loss is nearly L1, so this is common)."""
    bounds = problem.form.bounds()
    lo, hi = np.array(bounds).T
    x0 = np.clip(start, lo, hi)
    options = {"maxiter": maxiter, "ftol": 1e-11, "gtol": 1e-9, "maxcor": 20}
    res = minimize(problem.objective, x0, args=(weights,), jac=True, method="L-BFGS-B", bounds=bounds, options=options)
    message = _plain(res.status)
    if res.status == 2:
        again = minimize(
            problem.objective, res.x, args=(weights,), jac=True, method="L-BFGS-B", bounds=bounds, options=options
        )
        stalled = again.fun >= res.fun - 1e-9 * max(1.0, abs(res.fun))
        if again.fun < res.fun:
            res = again
        ok = stalled or again.status == 0
        return Optimum(res.x, float(res.fun), ok, "converged (no further descent)" if ok else message)
    return Optimum(res.x, float(res.fun), res.status == 0 and np.isfinite(res.fun), message)


def _from_start(problem: Problem, start: np.ndarray, maxiter: int) -> Optimum:
    """Minimise from a grid start through smoother Huber losses (δ = 0.1, 0.01, then the requested δ):
    the nearly-L1 loss of δ = 1e-3 converges slowly from far away; the end point is the same kind of
    optimum, of the requested objective."""
    stages = [d for d in (1e-1, 1e-2) if d > problem.huber_delta]
    for d in stages:
        smooth = Problem(problem.form, problem.X, problem.y, d)
        start = minimise(smooth, start, maxiter=maxiter).theta
    return minimise(problem, start, maxiter=maxiter)


@dataclass
class FitResult:
    """A fitted law: natural parameters and fit statistics (log space)."""

    law: LawForm
    params: Params
    target: str
    objective: float  # Σ Huber_δ(log residual)
    r2_log: float
    rmse_log: float
    n_points: int
    converged: bool
    message: str
    huber_delta: float
    at_bounds: list[str] = field(default_factory=list)
    theta: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def predict(self, inputs: Mapping[str, object]) -> np.ndarray:
        return self.law.predict(self.params, inputs)

    def stats(self) -> dict[str, object]:
        return {
            "objective": self.objective,
            "r2_log": self.r2_log,
            "rmse_log": self.rmse_log,
            "n_points": self.n_points,
            "converged": self.converged,
            "message": self.message,
            "huber_delta": self.huber_delta,
            "at_bounds": list(self.at_bounds),
        }


def get_form(law: LawForm | str) -> LawForm:
    return get_law(law) if isinstance(law, str) else law


def make_problem(
    law: LawForm | str, data: Mapping[str, object], target: str | None = None, huber_delta: float = 1e-3
) -> Problem:
    """Validate ``data`` for ``law`` and bind per-label parameters to the labels present."""
    form = get_form(law)
    if not huber_delta > 0:
        raise QscaleError(f"huber_delta must be > 0, got {huber_delta}")
    target = target or form.target
    if target not in data:
        raise QscaleError(f"target column {target!r} not found (have: {', '.join(sorted(data)) or 'none'})")
    inputs = check_inputs(form, data)
    y = check_target(target, data[target])
    if len(y) != len(next(iter(inputs.values()))):
        raise QscaleError(f"target column {target!r} has {len(y)} rows, inputs have {len(next(iter(inputs.values())))}")
    form = form.bind(inputs)
    if len(y) <= len(form.params):
        raise QscaleError(
            f"law {form.name!r} has {len(form.params)} parameters but the data has only {len(y)} points; "
            "need more points than parameters"
        )
    return Problem(form, form.features(inputs), np.log(y), huber_delta)


def fit_problem(
    problem: Problem, init: np.ndarray | None = None, n_starts: int = 8, maxiter: int = 2000, target: str = ""
) -> FitResult:
    """Fit a prepared problem from ``init`` (internal coordinates) or the form's grid of starts."""
    form = problem.form
    if init is not None:
        starts = np.atleast_2d(init)
    else:
        grid = form.start_grid()
        scores = np.array([_value_only(problem, t, None) for t in grid])
        starts = grid[np.argsort(scores, kind="stable")[:n_starts]]
    with single_thread_blas():
        optima = [_from_start(problem, s, maxiter) for s in starts]
    good = [o for o in optima if o.converged]
    if not good:
        best = min(optima, key=lambda o: o.value)
        raise ConvergenceError(
            f"fit of law {form.name!r} did not converge ({best.message}): check the data for "
            "outliers, give more points, or try another --huber-delta"
        )
    best = min(good, key=lambda o: o.value)
    r = form._log_predict(best.theta, problem.X) - problem.y
    ss_tot = float(((problem.y - problem.y.mean()) ** 2).sum())
    lo, hi = np.array(form.bounds()).T
    at_bounds = [
        p.name
        for p, t, a, b in zip(form.params, best.theta, lo, hi, strict=True)
        if min(t - a, b - t) <= 1e-7 * max(1.0, abs(t))
    ]
    return FitResult(
        law=form,
        params=form.to_natural(best.theta),
        target=target,
        objective=best.value * problem.huber_delta,
        r2_log=1.0 - float((r**2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
        rmse_log=float(np.sqrt((r**2).mean())),
        n_points=problem.n,
        converged=True,
        message=best.message,
        huber_delta=problem.huber_delta,
        at_bounds=at_bounds,
        theta=best.theta,
    )


def fit_law(
    law: LawForm | str,
    data: Mapping[str, object],
    target: str | None = None,
    huber_delta: float = 1e-3,
    init: Mapping[str, object] | None = None,
    n_starts: int = 8,
    maxiter: int = 2000,
) -> FitResult:
    """Fit ``law`` to ``data`` (columns by name) on log residuals of column ``target``.

    ``target`` defaults to the law's own (``qid`` for qid laws, ``delta`` for qat / precision_ptq,
    ``loss`` otherwise). ``init`` (natural parameters) replaces the grid of starts by one start.
    """
    problem = make_problem(law, data, target, huber_delta)
    theta0 = problem.form.to_internal(init) if init is not None else None
    return fit_problem(problem, theta0, n_starts=n_starts, maxiter=maxiter, target=target or problem.form.target)
