"""qscale.laws — scaling-law engine: law forms, robust fitting, bootstrap intervals, extrapolation
checks, prediction and inversion, published parameter sets (SPEC §1–5).

Stable API (data is a mapping of column name -> 1-D array; default columns N, D, P, G, precision and a
target ``qid`` / ``delta`` / ``loss``)::

    from qscale.laws import get_law, LAWS, fit_law, FitResult, bootstrap_ci, extrapolation_check
    fit = fit_law("qid", {"N": N, "D": D, "P": P, "qid": qid})      # -> FitResult
    fit.params            # {"k": ..., "alpha": ..., "beta": ..., "gamma": ...}; eff / k per label nested
    fit.objective, fit.r2_log, fit.rmse_log, fit.n_points, fit.converged, fit.message
    fit.predict({"N": 7e10, "D": 1e13, "P": 4})
    ci = bootstrap_ci("qid", data, n_boot=200, seed=0, fit=fit)    # {"k": (lo, hi), ...}
    ex = extrapolation_check("qid", data, hold_out="N")           # rel. errors on the largest-N rows
    predict("qid", params, {"N": ..., "D": ..., "P": ...})
    invert("qid", params, {"N": 70e9, "P": 4}, 0.2, solve_for="D")  # tokens to reach QiD = 0.2
    PUBLISHED["ouyang2024-gptq"].params / .citation / .law          # published parameter sets
    load_table(path, table=None, where=None, columns={"N": "n_params"})  # CSV / Parquet / SQLite
    plot_observed_vs_predicted(fit, data, path=None); plot_law_curves(law, params, x, x_values, series)
    law = LawSamples.from_record("qid", fit.params, samples_record(boot))   # point params + bootstrap samples
    predict_interval(law, {"N": 7e9, "D": 2e12, "P": 4})           # Estimate(value, lo, hi) at 95%
    invert_interval(law, {"N": 7e9, "P": 4}, 0.2, "D")               # tokens to reach QiD 0.2, with interval
    rank_methods({"gptq": law_a, "rtn": law_b}, {"N": 7e9, "D": 2e12, "P": 4})  # Ranking: best, resolved
    screen_rows(rows, "qid")   # the studies' noise policy on a store's rows (qid > 2 x qid_se)

Bad input raises :class:`qscale.errors.QscaleError` naming the column / row; a fit that does not
converge raises :class:`qscale.errors.ConvergenceError`.
"""

from qscale.laws.bootstrap import Bootstrap, bootstrap_ci, bootstrap_problem
from qscale.laws.compare import Ranking, rank_methods
from qscale.laws.extrapolate import extrapolation_check
from qscale.laws.fit import FitResult, fit_law, fit_problem, make_problem
from qscale.laws.forms import LawForm, Param
from qscale.laws.io import load_table
from qscale.laws.plot import plot_law_curves, plot_observed_vs_predicted
from qscale.laws.predict import invert, predict
from qscale.laws.published import PUBLISHED, PublishedLaw, get_published
from qscale.laws.registry import LAWS, get_law, register_law
from qscale.laws.screen import Screening, screen_rows
from qscale.laws.uncertainty import Estimate, LawSamples, invert_interval, predict_interval, samples_record
from qscale.laws.user import UserLaw

__all__ = [
    "LAWS",
    "PUBLISHED",
    "Bootstrap",
    "Estimate",
    "FitResult",
    "LawForm",
    "LawSamples",
    "Param",
    "PublishedLaw",
    "Ranking",
    "Screening",
    "UserLaw",
    "bootstrap_ci",
    "bootstrap_problem",
    "extrapolation_check",
    "fit_law",
    "fit_problem",
    "get_law",
    "get_published",
    "invert",
    "invert_interval",
    "load_table",
    "make_problem",
    "plot_law_curves",
    "plot_observed_vs_predicted",
    "predict",
    "predict_interval",
    "rank_methods",
    "register_law",
    "samples_record",
    "screen_rows",
]
