"""``qscale fit`` on a study's store (the studies' noise policy) and ``qscale predict`` with 95% intervals,
from a fit file and from a study's report/fit.json."""

import json
import re
import sqlite3

import numpy as np
import pytest

from qscale.cli import main
from qscale.laws import get_law


def _store(path, qid_data, qid_true):
    """A QiD store like a study's: two methods, per-row paired SE, 8-bit rows within noise (some <= 0)."""
    d = qid_data(0, 60, noise=0.03)
    rows, n_noise = [], 0
    for i, (n, t, p, q) in enumerate(zip(d["N"], d["D"], d["P"], d["qid"], strict=True)):
        se = 0.05 * q
        if p == 8:  # within the noise: QiD of +-SE, like the quick study's "value -3.8e-05"
            q, se, n_noise = (-3.8e-05 if i % 2 else 1e-5), 1e-4, n_noise + 1
        for method, scale in (("gptq", 1.0), ("rtn", 2.0)):
            rows.append((n, t, p, 128, method, q * scale, se * scale))
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE qid (N INTEGER, D INTEGER, P INTEGER, G INTEGER, method TEXT, qid REAL, qid_se REAL)")
    con.executemany("INSERT INTO qid VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    return n_noise


def test_fit_on_a_study_store_applies_the_noise_policy_and_predict_gives_intervals(
    tmp_path, qid_data, qid_true, capsys
):
    db = tmp_path / "study.sqlite"
    n_noise = _store(db, qid_data, qid_true)
    assert main(["fit", "--law", "qid", "--data", str(db)]) == 2  # two methods pooled: refused, as the study
    assert "fit one at a time" in capsys.readouterr().err
    assert main(["fit", "--law", "qid", "--data", str(db), "--where", "method = 'gptq'", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["noise"]["n_excluded"] == n_noise > 0 and out["noise"]["n_nonpositive"] > 0
    assert out["n_points"] == 60 - n_noise
    assert out["params"]["gamma"] == pytest.approx(qid_true["gamma"], rel=0.1)
    assert len(out["bootstrap"]["samples"]) == 200 and out["bootstrap"]["names"] == ["k", "alpha", "beta", "gamma"]
    (tmp_path / "gptq.json").write_text(json.dumps(out))

    assert main(["predict", "--params", str(tmp_path / "gptq.json"), "--N", "7e9", "--D", "2e12", "--bits", "4"]) == 0
    line = capsys.readouterr().out
    m = re.match(r"qid = (\S+)  \(95% PI (\S+) – (\S+) for a new measurement; 95% CI (\S+) – (\S+) of the", line)
    assert m, line
    value, plo, phi, lo, hi = map(float, m.groups())
    truth = float(get_law("qid").predict(qid_true, {"N": 7e9, "D": 2e12, "P": 4}))
    assert lo < value < hi and lo < truth < hi and plo < lo and hi < phi
    assert (
        main(
            ["predict", "--params", str(tmp_path / "gptq.json"), "--N", "7e9", "--bits", "4", "--qid", "0.05", "--json"]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["interval"]["lo"] < res["value"] < res["interval"]["hi"] and res["solve_for"] == "D"


def test_predict_reads_a_study_fit_json(tmp_path, qid_data, qid_true, capsys):
    db = tmp_path / "study.sqlite"
    _store(db, qid_data, qid_true)
    assert main(["fit", "--law", "qid", "--data", str(db), "--where", "method = 'gptq'", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    study = {
        "law": "QiD = k * D^beta / (N^alpha * P^gamma)",
        "law_name": "qid",
        "measured_D_range": [1e9, 1e12],
        "methods": {
            "gptq": {"params": fit["params"], "bootstrap": fit["bootstrap"], "error": None},
            "rtn": {"params": None, "error": "not fitted: only 2 points above the noise floor"},
        },
    }
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(study))
    assert main(["predict", "--params", str(path), "--N", "7e9", "--D", "2e12", "--bits", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("gptq: qid = ") and "95% CI" in out[0] and "extrapolation: D = 2e+12" in out[0]
    assert out[1] == "rtn: not fitted: only 2 points above the noise floor"
    assert main(["predict", "--params", str(path), "--method", "rtn", "--N", "7e9", "--D", "2e12", "--bits", "4"]) == 2
    assert "no fitted law" in capsys.readouterr().err
    assert main(["predict", "--params", str(path), "--method", "awq", "--N", "7e9", "--D", "2e12", "--bits", "4"]) == 2
    assert "no method 'awq'" in capsys.readouterr().err
    study["methods"]["gptq"]["bootstrap"]["samples"] = [[np.nan] * 4] * 30
    path.write_text(json.dumps(study).replace("NaN", "null"))
    assert main(["predict", "--params", str(path), "--N", "7e9", "--D", "2e12", "--bits", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qscale: error:") and "bootstrap" in err and len(err.strip().splitlines()) == 1
