"""Warnings on implausible predictions: far outside the fitted range, above the full-precision loss, wrong signs."""

import json
import math

import numpy as np
import pytest

from qscale.cli import main
from qscale.laws import get_law
from qscale.laws.plausibility import (
    UNIFORM_NATS,
    fp_loss_bound,
    pythia_loss16,
    range_warnings,
    sign_warnings,
    value_warnings,
)
from qscale.report.qid import ReportConfig, write_qid_report

RANGES = {"N": [1e5, 1e6], "D": [1e6, 1e8], "P": [2, 4], "G": [32, 128]}


def test_range_warnings_only_far_outside():
    assert range_warnings(RANGES, {"N": 5e6, "D": 5e8, "P": 5, "G": 256}) == []  # outside, but near
    far = range_warnings(RANGES, {"N": 2e7, "D": 5e4, "P": 8, "G": 1024})
    assert len(far) == 4
    assert far[0].startswith("N = 2e+07 is 20x beyond the largest fitted N")
    assert far[1].startswith("D = 5e+04 is 20x beyond the smallest fitted D")
    assert "4 bits outside" in far[2] and "G = 1.02e+03 is 8x" in far[3]


def test_value_warnings_against_the_full_precision_loss():
    assert value_warnings("qid", 0.3, loss_fp=3.4) == []
    (w,) = value_warnings("qid", 5.0, loss_fp=3.4)
    assert "above the model's full-precision loss (3.4 nats" in w
    assert value_warnings("qid", 5.0) == []  # no known loss: only the uniform-guess bound applies
    (w,) = value_warnings("qid", 1.07e9)
    assert "1.07e+09 nats is above ln(256,000)" in w and UNIFORM_NATS == pytest.approx(12.45, abs=0.01)
    assert value_warnings("loss", 1e9) == []  # a loss is not a damage: no bound here


def test_sign_warnings_where_the_paper_knows_the_sign():
    params = {"k": 0.1, "alpha": -0.3, "beta": 0.5, "gamma": 4.0}
    (w,) = sign_warnings("qid", params, {"alpha": [-0.5, -0.1]})
    assert w.startswith("fitted alpha = -0.3 < 0 where the paper finds QiD falls with N") and "below 0" in w
    (w,) = sign_warnings("qid", params, {"alpha": [-0.5, 0.2]})
    assert "includes 0" in w
    qat = {"k": 0.1, "gamma_N": 0.2, "gamma_D": -0.1, "gamma_G": 0.5}
    assert sign_warnings("qat_w4a4", qat)[0].startswith("fitted gamma_D = -0.1 < 0 where the paper finds δ grows")
    assert sign_warnings("chinchilla", {"alpha": -1.0}) == []  # no paper sign for this form here


def test_fp_loss_bound_and_pythia_loss():
    fp = [
        {"N": 1e5, "D": 1e6, "loss_fp": 4.0},
        {"N": 1e5, "D": 1e7, "loss_fp": 3.5},
        {"N": 1e6, "D": 1e7, "loss_fp": 3.0},
    ]
    assert fp_loss_bound(fp, 1e6, 1e8) == 3.0 and fp_loss_bound(fp, 5e5, 1e8) == 3.5
    assert fp_loss_bound(fp, 1e4, 1e8) is None  # smaller than every measured model: no bound
    assert pythia_loss16(12e9, 300e9) == pytest.approx(((4.74e19 / 12e9) ** (0.045 / 0.399) + 7.63e10 / 300e9) ** 0.399)
    assert 2.0 < pythia_loss16(12e9, 300e9) < 3.0  # nats on the paper's held-out text


def _two_size_rows():
    """A 2-size suite whose larger model loses *more* to quantization (alpha < 0), as a noisy tiny suite can."""
    law = {"k": 1e-6, "alpha": -1.0, "beta": 0.5, "gamma": 2.0}
    rng = np.random.default_rng(0)
    return [
        {
            "model": m,
            "method": "gptq",
            "N": n,
            "D": d,
            "P": p,
            "G": 32,
            "qid_se": 1e-4,
            "qid": float(get_law("qid").predict(law, {"N": n, "D": d, "P": p})) * math.exp(rng.normal(0, 0.05)),
            "loss_fp": 3.6 if m == "xs" else 3.5,
            "loss_q": 4.0,
        }
        for m, n in (("xs", 1.07e5), ("s", 3.3e5))
        for d in np.geomspace(8e3, 5e5, 6).round()
        for p in (2, 3, 4)
    ]


def test_predict_on_a_two_size_suite_warns_about_a_huge_qid(tmp_path, capsys):
    write_qid_report(_two_size_rows(), tmp_path / "report", ReportConfig(n_boot=40))
    fit = tmp_path / "report" / "fit.json"
    argv = ["predict", "--params", str(fit), "--N", "7e9", "--D", "2e12", "--bits", "4"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    value = float(lines[0].split("qid = ")[1].split()[0])
    assert value > 1e3  # the extrapolated law gives thousands of nats, as the 1.07e9
    warnings = [w for w in lines[1:] if w.startswith("gptq: warning: ")]
    assert any("N = 7e+09 is" in w and "beyond the largest fitted N" in w for w in warnings)
    assert any("above the model's full-precision loss (3.5 nats" in w for w in warnings)
    assert any(w.startswith("gptq: warning: fitted alpha = ") for w in warnings)
    assert main([*argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["methods"]["gptq"]["warnings"]) == len(warnings)
    inside = ["predict", "--params", str(fit), "--N", "2e5", "--D", "1e5", "--bits", "3"]
    assert main(inside) == 0
    assert "warning: N" not in capsys.readouterr().out  # inside the fitted range: no range warning


def test_published_set_checked_against_pythias_loss(capsys):
    assert main(["predict", "--params", "ouyang2024-gptq", "--N", "1.6e8", "--D", "2e11", "--bits", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("qid = ") and "warning" not in out
    assert main(["predict", "--params", "ouyang2024-gptq", "--N", "1.6e8", "--D", "2e11", "--bits", "2"]) == 0
    out = capsys.readouterr().out  # the paper's own law at 2 bits: QiD 4.8 nats, above Pythia-160M's 3.3
    assert "above the model's full-precision loss" in out and "Pythia's Loss16 fit" in out
