"""Prediction, inversion (inverse of prediction to 1e-6 relative) and the published constants (SPEC §1–5)."""

import numpy as np
import pytest

from qscale.errors import QscaleError
from qscale.laws import PUBLISHED, UserLaw, fit_law, get_published, invert, predict
from qscale.laws.published import OUYANG_TABLE, qat_effective_multiplier

CASES = [
    ("ouyang2024-gptq", {"N": np.array([1e9, 7e10]), "D": np.array([1e11, 1e13]), "P": np.array([3.0, 4.0])}),
    ("ouyang2024-table", {"N": np.array([1e9, 7e10]), "D": np.array([1e11, 1e13]), "P": np.array([2.0, 4.0])}),
    ("chen2025-w4a4", {"N": np.array([7e7, 6e8]), "D": np.array([1e10, 1e11]), "G": np.array([32.0, 256.0])}),
    ("kumar2024-ptq", {"N": np.array([1e8, 1e9]), "D": np.array([1e10, 1e12]), "P": np.array([3.0, 6.0])}),
    ("besiroglu2024", {"N": np.array([1e8, 7e10]), "D": np.array([1e10, 1.4e12])}),
]


@pytest.mark.parametrize("name,inputs", CASES)
def test_inversion_inverts_prediction(name, inputs):
    pub = get_published(name)
    y = pub.predict(inputs)
    for var in pub.law.inputs:
        if var == pub.law.label_input:
            continue
        others = {c: v for c, v in inputs.items() if c != var}
        np.testing.assert_allclose(invert(pub.law_name, pub.params, others, y, var), inputs[var], rtol=1e-6)


def test_inversion_effective_params_and_user_law_by_brent():
    p = {"E": 1.7, "A": 400.0, "B": 2000.0, "alpha": 0.35, "beta": 0.36, "eff": {"w4a4": 0.7}}
    x = {"N": np.array([1e8, 1e9]), "D": np.array([1e10, 1e11]), "precision": np.array(["w4a4", "16"])}
    y = predict("effective_params", p, x)
    np.testing.assert_allclose(
        invert("effective_params", p, {"D": x["D"], "precision": x["precision"]}, y, "N"), x["N"], rtol=1e-6
    )
    user = UserLaw("u", "E + A / N**a", {"E": (0.1, 10), "A": (1, 1e4), "a": (0.01, 2)}, ["N"])
    q = {"E": 1.5, "A": 300.0, "a": 0.3}
    np.testing.assert_allclose(invert(user, q, {}, user.predict(q, {"N": 3e8}), "N"), 3e8, rtol=1e-6)


def test_unreachable_and_bad_inversions_raise():
    pub = get_published("hoffmann2022")
    with pytest.raises(QscaleError, match="not reachable"):
        invert("chinchilla", pub.params, {"N": 7e10}, 1.5, "D")
    with pytest.raises(QscaleError, match="can be solved for"):
        invert(
            "effective_params",
            {"E": 1, "A": 1, "B": 1, "alpha": 1, "beta": 1, "eff": {}},
            {"N": 1, "D": 1},
            2.0,
            "precision",
        )
    with pytest.raises(QscaleError, match="needs P"):
        invert("qid", get_published("ouyang2024-gptq").params, {"N": 7e10}, 0.2, "D")


def test_unified_qid_law_does_not_give_the_headline_table():
    """SPEC §1: the unified law gives ~10T tokens for 70B / 4-bit / QiD 0.2, the table says 17.35T."""
    d = invert("qid", get_published("ouyang2024-gptq").params, {"N": 70e9, "P": 4.0}, 0.2, "D")
    assert d / 1e12 == pytest.approx(10.25, abs=0.05)
    assert "does NOT follow" in get_published("ouyang2024-gptq").note


def test_per_bit_set_reproduces_the_headline_table():
    """Per-bit power laws reproduce every entry of the table to 0.2% (the 2-decimal rounding of the table's
    smallest entries is 0.1-0.4%, and the paper's own constants were rounded)."""
    pub = get_published("ouyang2024-table")
    for N, bits, qid, trillions in OUYANG_TABLE:
        d = invert("qid_per_bit", pub.params, {"N": N, "P": float(bits)}, qid, "D") / 1e12
        assert d == pytest.approx(trillions, rel=2e-3)


def test_per_bit_constants_are_the_fit_of_the_table():
    t = np.array(OUYANG_TABLE)
    fit = fit_law("qid_per_bit", {"N": t[:, 0], "P": t[:, 1], "qid": t[:, 2], "D": t[:, 3] * 1e12}, huber_delta=1.0)
    pub = get_published("ouyang2024-table").params
    for name in ("alpha", "beta"):
        assert fit.params[name] == pytest.approx(pub[name], rel=1e-5)
    for bits, k in pub["k"].items():
        assert fit.params["k"][bits] == pytest.approx(k, rel=1e-5)


def _qat_grid():
    N, D, G = np.meshgrid(
        [74e6, 145e6, 297e6, 595e6], [10e9, 20e9, 50e9, 100e9], [32.0, 64.0, 128.0, 256.0], indexing="ij"
    )
    return {"N": N.ravel(), "D": D.ravel(), "G": G.ravel()}


def test_chen_w4a4_is_about_0906_of_the_sum_of_its_parts():
    """Chen et al. 2025: δ_W4A4 ≈ 0.906·(δ_W4A16 + δ_W16A4), over the paper's N, D, G grid (SPEC §2)."""
    x = _qat_grid()
    ratio = get_published("chen2025-w4a4").predict(x) / (
        get_published("chen2025-w4a16").predict(x) + get_published("chen2025-w16a4").predict(x)
    )
    assert ratio.mean() == pytest.approx(0.906, abs=0.01)


def test_chen_fc2_int8_reduction():
    """FC2 input at 8 bits cuts the W4A4 error by 20.5% at G = 32 (SPEC §2). At G = 256 the paper reports
    42.9% from its runs; its fitted laws give ~36% there, so only the growth with G is asserted."""
    x = _qat_grid()
    cut = 1 - get_published("chen2025-w4a4-fc2int8").predict(x) / get_published("chen2025-w4a4").predict(x)
    assert cut[x["G"] == 32].mean() == pytest.approx(0.205, abs=0.01)
    assert cut[x["G"] == 256].mean() > cut[x["G"] == 32].mean() + 0.1


def test_qat_effective_multiplier_definition():
    A, alpha = 237.7042, 0.3022
    eff = qat_effective_multiplier(0.05, 3e8, A, alpha)
    assert A / (3e8 * eff) ** alpha == pytest.approx(A / 3e8**alpha + 0.05)  # same loss as the QAT gap


def test_every_published_set_has_a_citation_and_evaluates():
    assert {
        "ouyang2024-gptq",
        "chen2025-w4a4",
        "chen2025-w4a16",
        "chen2025-w16a4",
        "chen2025-w4a4-fc2int8",
        "chen2025-w16a4-fc2int8",
        "kumar2024-ptq",
        "hoffmann2022",
        "besiroglu2024",
    } <= set(PUBLISHED)
    inputs = {"N": 1e9, "D": 1e11, "P": 4.0, "G": 128.0}
    for pub in PUBLISHED.values():
        assert "20" in pub.citation and "arXiv" in pub.citation
        y = pub.predict({c: inputs[c] for c in pub.law.inputs})
        assert np.isfinite(y) and y > 0
    with pytest.raises(QscaleError, match="unknown published"):
        get_published("nope")
