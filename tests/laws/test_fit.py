"""Fitting (Hoffmann approach 3), bootstrap intervals, extrapolation check, bad input (SPEC §5)."""

import numpy as np
import pytest

from qscale.errors import ConvergenceError, QscaleError
from qscale.laws import bootstrap_problem, extrapolation_check, fit_law, fit_problem, get_law, make_problem


def test_recovers_known_parameters_without_noise(qid_data, qid_true):
    data = qid_data(seed=1, n=40, noise=0.0)
    fit = fit_law("qid", data)
    for name, value in qid_true.items():
        assert fit.params[name] == pytest.approx(value, rel=1e-5)
    assert fit.converged and fit.n_points == 40 and fit.r2_log == pytest.approx(1.0)
    assert fit.rmse_log < 1e-6 and fit.objective < 1e-10


def test_bootstrap_intervals_cover_true_parameters(qid_data, qid_true):
    """5% log-normal noise: every true parameter inside its 95% interval in at least 9 of 10 seeds."""
    covered = 0
    for seed in range(10):
        problem = make_problem("qid", qid_data(seed, n=60))
        boot = bootstrap_problem(problem, fit_problem(problem), n_boot=200, seed=seed)
        ci = boot.ci()
        assert boot.n_failed == 0 and boot.samples.shape == (200, 4)
        covered += all(ci[k][0] <= v <= ci[k][1] for k, v in qid_true.items())
    assert covered >= 9


def test_bootstrap_is_seeded(qid_data):
    from qscale.laws import bootstrap_ci

    data = qid_data(3, 30)
    a = bootstrap_ci("qid", data, n_boot=200, seed=5)
    assert a == bootstrap_ci("qid", data, n_boot=200, seed=5)
    assert a != bootstrap_ci("qid", data, n_boot=200, seed=6)
    assert all(lo < hi for lo, hi in a.values())


def test_bootstrap_per_label_intervals(qid_data):
    data = qid_data(4, 24)
    data["P"] = np.where(data["P"] > 3, 4.0, 3.0)
    problem = make_problem("qid_per_bit", data)
    boot = bootstrap_problem(problem, fit_problem(problem), n_boot=200, seed=0)
    ci = boot.ci()
    assert set(ci["k"]) == {"3", "4"} and all(lo < hi for lo, hi in ci["k"].values())


def test_chinchilla_known_parameters():
    rng = np.random.default_rng(0)
    N, D = 10 ** rng.uniform(7, 10, 80), 10 ** rng.uniform(9, 12, 80)
    true = {"E": 1.8, "A": 480.0, "B": 2000.0, "alpha": 0.35, "beta": 0.37}
    loss = get_law("chinchilla").predict(true, {"N": N, "D": D})
    fit = fit_law("chinchilla", {"N": N, "D": D, "loss": loss})
    for name, value in true.items():
        assert fit.params[name] == pytest.approx(value, rel=1e-3)


def test_extrapolation_check_holds_out_largest(qid_data, qid_true):
    data = qid_data(2, 80, noise=0.02)
    data["N"] = np.where(data["N"] > 5e9, 1e10, data["N"])
    data["qid"] = get_law("qid").predict(qid_true, data) * np.exp(0.02 * np.random.default_rng(0).standard_normal(80))
    out = extrapolation_check("qid", data, hold_out="N")
    assert out["held_out_value"] == 1e10 and out["n_test"] == int((data["N"] == 1e10).sum()) > 0
    assert out["n_train"] + out["n_test"] == 80 and out["mean_abs_rel_error"] < 0.05
    assert len(out["rel_errors"]) == out["n_test"]
    with pytest.raises(QscaleError, match="hold_out"):
        extrapolation_check("qid", data, hold_out="G")


def test_non_convergence_raises_with_a_plain_message():
    with pytest.raises(ConvergenceError, match=r"did not converge \(stopped at the iteration limit\)"):
        fit_law(
            "chinchilla",
            {"N": np.geomspace(1e7, 1e10, 20), "D": np.geomspace(1e9, 1e12, 20), "loss": np.linspace(4, 2, 20)},
            maxiter=2,
        )


@pytest.mark.parametrize(
    "column,value,match",
    [
        ("N", np.nan, "column 'N' data row 4: value nan is not finite"),
        ("D", np.inf, "column 'D' data row 4: value inf is not finite"),
        ("P", 0.0, "column 'P' data row 4: value 0 must be > 0"),
        ("qid", -0.1, "column 'qid' data row 4: value -0.1 must be > 0"),
    ],
)
def test_bad_values_are_named(column, value, match, qid_data):
    data = qid_data(0, 10)
    data[column] = data[column].copy()
    data[column][3] = value
    with pytest.raises(QscaleError, match=match):
        fit_law("qid", data)


def test_other_bad_inputs(qid_data):
    data = qid_data(0, 4)
    with pytest.raises(QscaleError, match="4 parameters but the data has only 4 points"):
        fit_law("qid", data)
    with pytest.raises(QscaleError, match=r"needs column.*P"):
        fit_law("qid", {k: v for k, v in data.items() if k != "P"})
    with pytest.raises(QscaleError, match="target column 'loss' not found"):
        fit_law("qid", data, target="loss")
    with pytest.raises(QscaleError, match="unknown law"):
        fit_law("qidd", data)
    with pytest.raises(QscaleError, match="data row 2: 'x' is not a number"):
        fit_law("qid", {**data, "N": np.array([1e9, "x", 1e9, 1e9], dtype=object)})
    with pytest.raises(QscaleError, match=r"G.*must be > 1"):
        fit_law("qat", {"N": np.ones(9) * 1e8, "D": np.ones(9) * 1e10, "G": np.ones(9), "delta": np.ones(9)})
    with pytest.raises(QscaleError, match="reference rows with precision = '16'"):
        fit_law(
            "effective_params",
            {"N": np.ones(9), "D": np.ones(9), "precision": np.array(["w4a4"] * 9), "loss": np.ones(9)},
        )
