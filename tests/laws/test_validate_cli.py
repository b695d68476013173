"""``qscale fit --validate`` on a study's store reports what the study's report does (same points, same seed)."""

import json
import math
import sqlite3

import numpy as np
import pytest

from qscale.cli import main
from qscale.laws import get_law
from qscale.laws.validate import validate_law
from qscale.report.qid import ReportConfig, write_qid_report

TRUE = {"k": 0.05, "alpha": 0.3, "beta": 0.5, "gamma": 2.0}


def _rows():
    rng = np.random.default_rng(3)
    rows = []
    for model, n in (("xs", 1e5), ("s", 3e5), ("m", 1e6)):
        for d in np.geomspace(1e5, 1e8, 5).round():
            for p in (2, 3, 4, 8):
                q = float(get_law("qid").predict(TRUE, {"N": n, "D": d, "P": p})) * math.exp(rng.normal(0, 0.1))
                se = 0.05 * q if p < 8 else 0.002
                rows.append({"model": model, "method": "gptq", "N": n, "D": d, "P": p, "G": 32, "qid": q, "qid_se": se})
    return rows


def test_fit_validate_on_the_store_matches_the_study_report(tmp_path, capsys):
    rows = _rows()
    write_qid_report(rows, tmp_path / "report", ReportConfig(n_boot=200))
    study = json.loads((tmp_path / "report" / "fit.json").read_text())["methods"]["gptq"]["validation"]
    db = tmp_path / "study.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE qid (model TEXT, method TEXT, N INT, D INT, P INT, G INT, qid REAL, qid_se REAL)")
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]  # another row order
    con.executemany("INSERT INTO qid VALUES (:model, :method, :N, :D, :P, :G, :qid, :qid_se)", shuffled)
    con.commit()
    con.close()
    argv = ["fit", "--law", "qid", "--data", str(db), "--validate", "N,D", "--json"]
    assert main([*argv, "--validate-plot", str(tmp_path / "parity.svg")]) == 0
    cli = json.loads(capsys.readouterr().out)["validation"]
    for hold in ("N", "D"):
        for key in ("n_test", "n_train", "covered", "covered_mean"):
            assert cli[hold][key] == study[hold][key], (hold, key)
        for key in ("median_abs_rel_error", "max_abs_rel_error"):
            assert cli[hold][key] == pytest.approx(study[hold][key], rel=1e-9), (hold, key)
    top = [r for r in rows if r["N"] == 1e6 and r["qid"] > 2 * r["qid_se"]]
    assert cli["N"]["n_test"] == len(top) >= 15 and (tmp_path / "parity.svg").read_text().startswith("<?xml")
    assert main(["fit", "--law", "qid", "--data", str(db), "--validate", "D"]) == 0
    text = capsys.readouterr().out
    assert f"{study['D']['covered']}/{study['D']['n_test']} inside the 95% prediction interval" in text


def test_validation_errors_are_reported_not_raised():
    one_n = {"N": np.full(8, 1e5), "D": np.geomspace(1e5, 1e8, 8), "P": np.full(8, 4.0), "qid": np.linspace(0.1, 1, 8)}
    with pytest.raises(Exception, match="two distinct values of N"):
        validate_law(one_n, "qid", "N")
    with pytest.raises(Exception, match="largest N or D"):
        validate_law(one_n, "qid", "P")


def test_validation_refuses_a_fit_left_with_one_value_of_the_held_out_input():
    """Two D values: without the largest, the fit has one D and its exponent is free (an 88% "miss" before)."""
    rows = {"N": np.repeat([1e5, 3e5, 1e6], 4), "D": np.tile([1e6, 1e6, 2e6, 2e6], 3), "P": np.tile([2.0, 4.0], 6)}
    rows["qid"] = get_law("qid").predict(TRUE, rows)
    with pytest.raises(Exception, match="one value of D"):
        validate_law(rows, "qid", "D")
    assert validate_law(rows, "qid", "N").n_test == 4  # P and D vary in the fit: the N check runs
