"""Law forms against their definitions (SPEC §1–5), parameter nesting, user forms, the registry."""

import numpy as np
import pytest

from qscale.errors import QscaleError
from qscale.laws import LAWS, UserLaw, get_law, register_law

N, D, P, G = np.array([1e8, 7e9]), np.array([1e10, 3e12]), np.array([3.0, 4.0]), np.array([32.0, 256.0])


def test_qid_unified_definition():
    p = {"k": 0.017, "alpha": 0.2261, "beta": 0.5251, "gamma": 5.4967}
    want = 0.017 * D**0.5251 / (N**0.2261 * P**5.4967)
    np.testing.assert_allclose(get_law("qid").predict(p, {"N": N, "D": D, "P": P}), want, rtol=1e-12)


@pytest.mark.parametrize(
    "name,param,col,sign", [("qid_D", "beta", "D", 1), ("qid_N", "alpha", "N", -1), ("qid_P", "gamma", "P", -1)]
)
def test_qid_single_factor_definitions(name, param, col, sign):
    x = {"N": N, "D": D, "P": P}[col]
    got = get_law(name).predict({"k": 0.5, param: 0.3}, {col: x})
    np.testing.assert_allclose(got, 0.5 * x ** (sign * 0.3), rtol=1e-12)


def test_qat_definition():
    p = {"k": 0.1582, "gamma_N": 0.2186, "gamma_D": 0.0745, "gamma_G": 0.7779}
    want = 0.1582 * D**0.0745 * np.log2(G) ** 0.7779 / N**0.2186
    np.testing.assert_allclose(get_law("qat").predict(p, {"N": N, "D": D, "G": G}), want, rtol=1e-12)


def test_precision_ptq_definition():
    p = {"C_T": 0.0598, "gamma_D": 0.5068, "gamma_N": 0.3439, "gamma_post": 0.5907}
    want = 0.0598 * D**0.5068 / N**0.3439 * np.exp(-P / 0.5907)
    np.testing.assert_allclose(get_law("precision_ptq").predict(p, {"N": N, "D": D, "P": P}), want, rtol=1e-12)


def test_chinchilla_definition():
    p = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    want = 1.69 + 406.4 / N**0.34 + 410.7 / D**0.28
    np.testing.assert_allclose(get_law("chinchilla").predict(p, {"N": N, "D": D}), want, rtol=1e-12)


def test_effective_params_definition_and_reference():
    p = {"E": 1.7, "A": 400.0, "B": 2000.0, "alpha": 0.35, "beta": 0.36, "eff": {"w4a4": 0.7}}
    prec = np.array(["16", "w4a4"], dtype=object)
    want = 400.0 / (N * np.array([1.0, 0.7])) ** 0.35 + 2000.0 / D**0.36 + 1.7
    np.testing.assert_allclose(
        get_law("effective_params").predict(p, {"N": N, "D": D, "precision": prec}), want, rtol=1e-12
    )
    with pytest.raises(QscaleError, match="data row 2: label 'w2a2'"):
        get_law("effective_params").predict(p, {"N": N, "D": D, "precision": np.array(["16", "w2a2"])})


def test_qid_per_bit_definition():
    p = {"alpha": 0.38, "beta": 0.66, "k": {"3": 4e-5, "4": 6e-6}}
    got = get_law("qid_per_bit").predict(p, {"N": N, "D": D, "P": P})
    np.testing.assert_allclose(got, np.array([4e-5, 6e-6]) * D**0.66 / N**0.38, rtol=1e-12)


def test_user_expression_and_callable_agree():
    expr = UserLaw("my_pow", "c * D**b / N**a", {"c": (1e-6, 1e3), "a": (-5, 5), "b": (-5, 5)}, ["N", "D"], "qid")
    call = UserLaw(
        "my_pow2",
        lambda N, D, c, a, b: c * D**b / N**a,
        {"c": (1e-6, 1e3), "a": (-5, 5), "b": (-5, 5)},
        ["N", "D"],
        "qid",
    )
    p = {"c": 0.017, "a": 0.2261, "b": 0.5251}
    want = 0.017 * D**0.5251 / N**0.2261
    np.testing.assert_allclose(expr.predict(p, {"N": N, "D": D}), want, rtol=1e-12)
    np.testing.assert_allclose(call.predict(p, {"N": N, "D": D}), want, rtol=1e-12)
    assert expr.params[0].log and not expr.params[1].log  # positive lower bound -> fitted as a log


@pytest.mark.parametrize(
    "expr,why",
    [
        ("__import__('os').system('true')", "not allowed|only"),
        ("c.real", "not allowed"),
        ("x * c", "unknown name 'x'"),
        ("c *", "law expression"),
    ],
)
def test_user_expression_rejects_unsafe_or_unknown(expr, why):
    with pytest.raises(QscaleError, match=why):
        UserLaw("bad", expr, {"c": (1e-3, 1e3)}, ["N"])


def test_registry():
    assert {
        "qid",
        "qid_D",
        "qid_N",
        "qid_P",
        "qat",
        "qat_w4a4",
        "qat_w4a16",
        "qat_w16a4",
        "precision_ptq",
        "chinchilla",
        "effective_params",
    } <= set(LAWS)
    with pytest.raises(QscaleError, match="unknown law 'nope'"):
        get_law("nope")
    with pytest.raises(QscaleError, match="already registered"):
        register_law("qid", LAWS["qid"])


def test_missing_parameter_and_column_are_named():
    with pytest.raises(QscaleError, match=r"missing parameter.*gamma"):
        get_law("qid").predict({"k": 1, "alpha": 1, "beta": 1}, {"N": N, "D": D, "P": P})
    with pytest.raises(QscaleError, match=r"needs column.*P"):
        get_law("qid").predict({"k": 1, "alpha": 1, "beta": 1, "gamma": 1}, {"N": N, "D": D})
