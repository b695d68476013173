"""QiD report: fit on points drawn from a known law, noise policy counts, inversion, files written."""

import json
import math

import numpy as np
import pytest

from qscale.report.markdown import _tokens
from qscale.report.qid import ReportConfig, predict_qid, tokens_for_qid, trends, write_qid_report

TRUE = {"k": 0.05, "alpha": 0.3, "beta": 0.5, "gamma": 2.0}


def _law(p, N, D, P):
    """QiD = k·D^β/(N^α·P^γ) typed out here (Ouyang et al. 2024, SPEC §1), independent of the engine."""
    return p["k"] * D ** p["beta"] / (N ** p["alpha"] * P ** p["gamma"])


SIZES = {"xs": 100_000, "s": 300_000, "m": 1_000_000}


def _rows(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for model, n in SIZES.items():
        for d in np.geomspace(1e5, 1e8, 6).round():
            for p in (2, 3, 4, 8):
                q = float(_law(TRUE, n, d, p)) * math.exp(rng.normal(0, 0.02))
                se = 0.002
                if p == 8 and d < 1e6:  # measurement noise swamps the tiny 8-bit QiD of early checkpoints
                    q = -0.001 if d < 3e5 else 0.0
                rows.append(
                    {
                        "model": model,
                        "method": "gptq",
                        "N": n,
                        "D": d,
                        "P": p,
                        "G": 128,
                        "qid": q,
                        "qid_se": se,
                        "loss_fp": 3.0,
                        "loss_q": 3.0 + q,
                    }
                )
    return rows


def test_report_law_is_the_papers_formula():
    assert float(predict_qid(TRUE, 3e5, 1e7, 3)) == pytest.approx(_law(TRUE, 3e5, 1e7, 3), rel=1e-12)


def test_tokens_for_qid_inverts_the_law():
    d = tokens_for_qid(TRUE, 0.1, 1e6, 3)
    assert float(predict_qid(TRUE, 1e6, d, 3)) == pytest.approx(0.1, rel=1e-9)
    assert math.isnan(tokens_for_qid({**TRUE, "beta": -0.1}, 0.1, 1e6, 3))


def test_trends_count_directions():
    t = trends([r for r in _rows() if r["P"] != 8])
    assert t["D"] == {"grows": 9, "falls": 0, "flat": 0}
    assert t["N"]["falls"] > 0 and t["N"]["grows"] == 0
    assert t["P"]["falls"] > 0 and t["P"]["grows"] == 0


def test_report_fits_known_law_counts_exclusions_and_inverts(tmp_path):
    rows = _rows()
    n_under = sum(1 for r in rows if r["qid"] <= 2 * r["qid_se"])
    cfg = ReportConfig(thresholds=(0.05, 0.1), inversion_bits=(2, 4), n_boot=20)
    rep = write_qid_report(rows, tmp_path / "report", cfg)
    fit = rep.fits["gptq"]
    for name, value in TRUE.items():
        assert fit.params[name] == pytest.approx(value, rel=0.1), name
    assert fit.excluded["total"] == n_under and fit.excluded["nonpositive"] == 6
    assert fit.stats["n_points"] == len(rows) - n_under
    for name in ("alpha", "beta", "gamma"):
        lo, hi = fit.ci[name]
        assert lo <= fit.params[name] <= hi

    for f in ("fit.json", "summary.md", "qid_vs_D_gptq.png", "observed_vs_predicted.png", "heldout_parity.png"):
        assert (tmp_path / "report" / f).stat().st_size > 0
    doc = json.loads((tmp_path / "report" / "fit.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert doc["n_boot"] == 20
    inv = doc["inversion"]["gptq"]
    assert len(inv) == len(SIZES) * 2 * 2
    for r in inv:  # the tokens in the report reproduce the threshold under the fitted law
        assert float(predict_qid(fit.params, r["N"], r["tokens"], r["P"])) == pytest.approx(r["qid"], rel=1e-6)
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "QiD grows with D? yes" in md and "excluded" in md
    for hold, n_top in (("N", 6 * 4), ("D", 3 * 4)):  # the held-out points: the largest size / last checkpoint
        v = doc["methods"]["gptq"]["validation"][hold]
        kept_top = [r for r in rows if r["qid"] > 2 * r["qid_se"] and r[hold] == max(x[hold] for x in rows)]
        assert v["n_test"] == len(kept_top) <= n_top and len(v["pairs"]) == v["n_test"]
        assert v["median_abs_rel_error"] < 0.06 and v["covered"] >= 0.8 * v["n_test"]  # a 2% scatter, known law
        assert f"{v['covered']}/{v['n_test']} in PI" in md
    assert doc["methods"]["gptq"]["scatter"]["sd_log"] == pytest.approx(0.02, rel=0.5)
    assert "## Held-out validation" in md and doc["fp_losses"][0]["loss_fp"] == 3.0
    for r in inv:
        assert _tokens(r["tokens"]) in md


def test_methods_ranked_at_a_target_with_intervals(tmp_path):
    gptq = _rows(seed=1)
    rtn = [{**r, "method": "rtn", "qid": r["qid"] * 4.0} for r in _rows(seed=2)]  # same law, k four times larger
    twin = [{**r, "method": "twin"} for r in _rows(seed=3)]  # the same law as gptq, other noise
    cfg = ReportConfig(thresholds=(0.1,), inversion_bits=(4,), n_boot=40, target=(7e9, 2e12, 4))
    rep = write_qid_report(gptq + rtn + twin, tmp_path / "report", cfg)
    doc = json.loads((tmp_path / "report" / "fit.json").read_text())
    ranking = doc["ranking"]
    assert ranking["target"] == {"N": 7e9, "D": 2e12, "P": 4.0}
    order = [m["method"] for m in ranking["methods"]]
    assert order[-1] == "rtn" and set(order[:2]) == {"gptq", "twin"}
    by = {m["method"]: m for m in ranking["methods"]}
    for m, f in rep.fits.items():  # the point value is the fitted law at the target
        assert by[m]["value"] == pytest.approx(float(predict_qid(f.params, 7e9, 2e12, 4)), rel=1e-9)
        assert by[m]["lo"] <= by[m]["value"] <= by[m]["hi"]
    assert by["rtn"]["separated_from_previous"] is True  # 4x apart, 2% noise: the intervals separate
    assert by[order[1]]["separated_from_previous"] is False and ranking["resolved"] is False  # the twins overlap
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "Methods ranked at the target" in md and "do not separate them" in md
