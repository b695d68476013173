"""Bootstrap confidence intervals of fitted parameters (resampling rows; Besiroglu et al. 2024, SPEC §5).

Each resample is a vector of row counts (multinomial weights), so no data is copied; every refit is
warm-started from the full-data optimum, which makes 200+ resamples cost about as much as a few fits.
For per-label forms rows are resampled within each label, so every label keeps its rows' count and
its parameter stays identified. Intervals are percentile intervals of the converged refits.

The refits are independent, so they run on every usable core (forked worker processes, each with a
contiguous share of the resamples, one BLAS thread each); the resample weights are drawn first in this
process, so the samples are the same, in the same order, on any number of cores.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from qscale.errors import ConvergenceError, QscaleError
from qscale.laws.fit import FitResult, Problem, fit_problem, make_problem, minimise, single_thread_blas
from qscale.laws.forms import LawForm


@dataclass
class Bootstrap:
    """Natural-parameter samples (rows: converged resamples; columns: flat parameter names)."""

    names: list[str]
    samples: np.ndarray
    n_boot: int
    n_failed: int
    level: float

    def ci(self) -> dict[str, object]:
        """Percentile intervals, nested like the parameters: name -> (lo, hi), eff -> {label: (lo, hi)}."""
        q = 100 * np.array([(1 - self.level) / 2, (1 + self.level) / 2])
        lo, hi = np.percentile(self.samples, q, axis=0)
        out: dict[str, object] = {}
        groups: dict[str, dict[str, tuple[float, float]]] = {}
        for name, a, b in zip(self.names, lo, hi, strict=True):
            if "[" in name:
                base, label = name[:-1].split("[", 1)
                group = groups.setdefault(base, {})
                out.setdefault(base, group)
                group[label] = (float(a), float(b))
            else:
                out[name] = (float(a), float(b))
        return out


def _strata(problem: Problem) -> list[np.ndarray]:
    if "idx" in problem.X:
        return [np.flatnonzero(problem.X["idx"] == v) for v in np.unique(problem.X["idx"])]
    return [np.arange(problem.n)]


_MIN_PER_WORKER = 16  # fewer refits than this per core are not worth a process
_JOB: tuple[Problem, np.ndarray, np.ndarray] | None = None  # what forked workers read (never pickled)


def _refit(rows: range) -> list[np.ndarray | None]:
    """Refits of the resamples ``rows`` of ``_JOB``: each optimum's parameters, or None where it failed."""
    assert _JOB is not None
    problem, start, weights = _JOB
    with single_thread_blas():
        return [opt.theta if opt.converged else None for opt in (minimise(problem, start, weights[i]) for i in rows)]


def _usable_cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _refits(problem: Problem, start: np.ndarray, weights: np.ndarray, workers: int) -> list[np.ndarray | None]:
    """``minimise`` from ``start`` under each row of ``weights``, in order, on up to ``workers`` processes
    (forked, so ``problem`` is shared, not copied through a pipe; in-process where fork is unavailable or
    this is itself a daemon process)."""
    global _JOB
    workers = min(workers, len(weights) // _MIN_PER_WORKER)
    _JOB = (problem, start, weights)
    try:
        if workers < 2 or "fork" not in mp.get_all_start_methods() or mp.current_process().daemon:
            return _refit(range(len(weights)))
        shares = [range(int(a[0]), int(a[-1]) + 1) for a in np.array_split(np.arange(len(weights)), workers)]
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            return [theta for part in pool.map(_refit, shares) for theta in part]
    finally:
        _JOB = None


def bootstrap_problem(
    problem: Problem,
    full: FitResult,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    max_failed: float = 0.05,
    workers: int | None = None,
) -> Bootstrap:
    """Refit ``problem`` on ``n_boot`` row resamples, warm-started at ``full``'s optimum, on ``workers``
    processes (default: every usable core; the result does not depend on it)."""
    if n_boot < 2:
        raise QscaleError(f"n_boot must be >= 2, got {n_boot}")
    if not 0 < level < 1:
        raise QscaleError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    strata = _strata(problem)
    form = problem.form
    weights = np.zeros((n_boot, problem.n))
    for b in range(n_boot):
        for rows in strata:
            np.add.at(weights[b], rows[rng.integers(0, len(rows), len(rows))], 1.0)
    thetas = _refits(problem, full.theta, weights, _usable_cores() if workers is None else workers)
    converged = [theta for theta in thetas if theta is not None]
    samples = [[p.to_natural(t) for p, t in zip(form.params, theta, strict=True)] for theta in converged]
    failed = n_boot - len(samples)
    if failed > max_failed * n_boot:
        raise ConvergenceError(f"{failed} of {n_boot} bootstrap refits of law {form.name!r} did not converge")
    return Bootstrap(list(form.param_names), np.array(samples), n_boot, failed, level)


def bootstrap_ci(
    law: LawForm | str,
    data: Mapping[str, object],
    target: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    huber_delta: float = 1e-3,
    fit: FitResult | None = None,
) -> dict[str, object]:
    """95% (``level``) percentile bootstrap intervals per parameter: name -> (lo, hi).

    Pass ``fit`` (a :func:`~qscale.laws.fit.fit_law` result on the same data) to skip the full refit.
    """
    problem = make_problem(law, data, target, huber_delta)
    full = fit if fit is not None else fit_problem(problem)
    return bootstrap_problem(problem, full, n_boot, seed, level).ci()
