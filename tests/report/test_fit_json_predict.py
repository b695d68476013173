"""A QiD report's fit.json carries the bootstrap samples ``qscale predict`` turns into 95% intervals."""

import json
import math
import re

import numpy as np

from qscale.cli import main
from qscale.laws import get_law
from qscale.report.qid import ReportConfig, write_qid_report

TRUE = {"k": 0.05, "alpha": 0.3, "beta": 0.5, "gamma": 2.0}


def test_report_fit_json_feeds_predict_with_intervals(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = [
        {
            "model": m,
            "method": "gptq",
            "N": n,
            "D": d,
            "P": p,
            "G": 128,
            "qid_se": 0.002,
            "qid": float(get_law("qid").predict(TRUE, {"N": n, "D": d, "P": p})) * math.exp(rng.normal(0, 0.02)),
            "loss_fp": 3.0,
            "loss_q": 3.1,
        }
        for m, n in (("xs", 1e5), ("s", 3e5), ("m", 1e6))
        for d in np.geomspace(1e5, 1e8, 5).round()
        for p in (2, 3, 4)
    ]
    write_qid_report(rows, tmp_path / "report", ReportConfig(n_boot=200))
    doc = json.loads((tmp_path / "report" / "fit.json").read_text())
    assert doc["law_name"] == "qid" and len(doc["methods"]["gptq"]["bootstrap"]["samples"]) == 200
    assert doc["ranges"]["N"] == [1e5, 1e6]
    argv = ["predict", "--params", str(tmp_path / "report" / "fit.json"), "--N", "7e9", "--D", "2e12", "--bits", "4"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    m = re.match(
        r"gptq: qid = (\S+)  \(95% PI (\S+) – (\S+) for a new measurement; 95% CI (\S+) – (\S+) of the mean law, "
        r"bootstrap\)  \(extrapolation: N = 7e\+09",
        line,
    )
    assert m, line
    value, plo, phi, lo, hi = map(float, m.groups())
    assert lo < value < hi and lo < float(get_law("qid").predict(TRUE, {"N": 7e9, "D": 2e12, "P": 4})) < hi
    assert plo <= lo and hi <= phi and phi - plo > hi - lo  # the prediction interval adds a new point's scatter
