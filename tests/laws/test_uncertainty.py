"""Intervals on predictions and inversions from bootstrap samples, and ranking methods at a target."""

from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from qscale.errors import QscaleError
from qscale.laws import bootstrap_problem, fit_problem, get_law, make_problem
from qscale.laws.compare import rank_methods
from qscale.laws.uncertainty import LawSamples, invert_interval, predict_interval, samples_record

TARGET = {"N": 7e9, "D": 2e12, "P": 4.0}


def _fitted(data, n_boot=200, seed=0):
    problem = make_problem("qid", data, "qid")
    fit = fit_problem(problem, target="qid")
    boot = bootstrap_problem(problem, fit, n_boot, seed)
    return LawSamples.from_record("qid", fit.params, samples_record(boot))


def _scaled(data, factor):
    return {**data, "qid": data["qid"] * factor}


def test_prediction_and_inversion_intervals_cover_the_true_law(qid_data, qid_true):
    law = _fitted(qid_data(0, 60, noise=0.05))
    est = predict_interval(law, TARGET)
    truth = float(get_law("qid").predict(qid_true, TARGET))
    assert est.lo < truth < est.hi and est.lo < est.value < est.hi
    assert est.n_samples == 200 and est.n_failed == 0 and est.hi / est.lo < 2  # informative, not a blanket
    d = invert_interval(law, {"N": 7e9, "P": 4.0}, truth, "D")
    assert d.lo < 2e12 < d.hi and d.value == pytest.approx(2e12, rel=0.5)
    noisier = predict_interval(_fitted(qid_data(0, 60, noise=0.3)), TARGET)
    assert noisier.hi / noisier.lo > est.hi / est.lo  # more noise, wider interval


def test_bad_sample_records_are_errors(qid_true):
    rec = {"names": ["k", "alpha", "beta", "gamma"], "samples": [[0.01, 0.2, 0.5, 5.0]] * 30, "level": 0.95}
    assert LawSamples.from_record("qid", qid_true, rec).samples.shape == (30, 4)
    for bad, match in (
        ({**rec, "samples": rec["samples"][:5]}, ">= 20 finite samples"),
        ({**rec, "names": ["k", "alpha", "beta"]}, "malformed"),
        ({**rec, "names": ["k", "alpha", "beta", "delta"]}, "lack parameter"),
        (None, "no bootstrap samples"),
    ):
        with pytest.raises(QscaleError, match=match):
            LawSamples.from_record("qid", qid_true, bad, "f.json")


def test_rank_methods_orders_by_predicted_qid_and_says_which_intervals_separate(qid_data):
    base = qid_data(1, 60, noise=0.05)
    laws = {
        "good": _fitted(base),
        "twin": _fitted(_scaled(qid_data(2, 60, noise=0.05), 1.02)),
        "bad": _fitted(_scaled(qid_data(3, 60, noise=0.05), 3.0)),
    }
    r = rank_methods(laws, TARGET)
    assert [x.method for x in r.ranked][2] == "bad" and r.best in ("good", "twin")
    assert r.ranked[1].separated_from_previous is False  # good vs twin (2% apart): not resolved
    assert r.ranked[2].separated_from_previous is True  # 3x worse: separated
    assert not r.resolved
    two = rank_methods({"good": laws["good"], "bad": laws["bad"]}, TARGET)
    assert two.best == "good" and two.resolved
    d = two.as_dict()
    assert d["methods"][1]["value"] == pytest.approx(3 * d["methods"][0]["value"], rel=0.3)
    with pytest.raises(QscaleError):
        rank_methods({}, TARGET)


def test_inversion_with_unsolvable_samples_reports_them(qid_true):
    rec = {
        "names": ["k", "alpha", "beta", "gamma"],
        "level": 0.95,
        "samples": [[0.017, 0.2261, 0.5251, 5.4967]] * 25 + [[0.017, 0.2261, 0.0, 5.4967]] * 10,
    }
    law = LawSamples.from_record("qid", qid_true, rec)
    est = invert_interval(law, {"N": 7e9, "P": 4.0}, 0.01, "D")
    assert est.n_failed == 10 and est.n_samples == 35 and np.isfinite(est.lo)


def test_bootstrap_on_several_processes_gives_the_in_process_samples(qid_data, monkeypatch):
    """The refits run on forked workers (each a share of the resamples); the samples are the same, in order."""
    problem = make_problem("qid", qid_data(seed=2, n=40), "qid")
    fit = fit_problem(problem, target="qid")
    one = bootstrap_problem(problem, fit, 64, seed=3, workers=1)
    forked = []
    monkeypatch.setattr(ProcessPoolExecutor, "__init__", _recording(ProcessPoolExecutor.__init__, forked))
    two = bootstrap_problem(problem, fit, 64, seed=3, workers=2)
    assert forked == [2]  # the pool ran, with two workers
    np.testing.assert_array_equal(two.samples, one.samples)
    assert two.n_failed == one.n_failed


def _recording(init, calls):
    def wrapped(self, max_workers=None, *args, **kwargs):
        calls.append(max_workers)
        init(self, max_workers, *args, **kwargs)

    return wrapped
