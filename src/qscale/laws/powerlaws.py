"""Degradation laws that are power laws: log y is linear in the exponents.

- ``qid`` (Ouyang et al. 2024, arXiv 2411.17691, unified law; SPEC §1): QiD = k·D^β / (N^α·P^γ),
  with the single-factor laws ``qid_D`` (k·D^β), ``qid_N`` (k/N^α), ``qid_P`` (k/P^γ), and ``qid_per_bit``
  (k_P·D^β/N^α, one k per bit width: the form the paper's headline table is consistent with).
- ``qat`` (Chen et al. 2025, arXiv 2505.14302, δ_p; SPEC §2): δ = k·D^γD·(log2 G)^γG / N^γN, also registered
  as ``qat_w4a4``, ``qat_w4a16``, ``qat_w16a4`` (same form, labelled by the quantized part).
- ``precision_ptq`` (Kumar et al. 2024, arXiv 2411.04330, PTQ degradation; SPEC §3):
  δ = C_T·D^γD / N^γN · exp(−P/γ_post).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qscale.laws.forms import LawForm, Param, PerLabelForm

SCALE = (1e-30, 1e30)  # natural bounds of multiplicative constants (fitted as their log)
EXPONENT = (-20.0, 20.0)


def _scale(name: str) -> Param:
    return Param(name, *SCALE, log=True, grid=(1.0,))


def _exponent(name: str) -> Param:
    return Param(name, *EXPONENT, grid=(0.5,))


class PowerLaw(LawForm):
    """y = k · Π x_j^(±e_j): ``terms`` lists (exponent name, feature, sign); the first param is k."""

    target = "qid"
    terms: tuple[tuple[str, str, float], ...] = ()

    def __init__(
        self,
        name: str,
        terms: tuple[tuple[str, str, float], ...],
        target: str,
        description: str,
        citation: str,
        scale: str = "k",
        variant: str | None = None,
    ) -> None:
        self.name, self.terms, self.target = name, terms, target
        self.description, self.citation, self.variant = description, citation, variant
        self.params = (_scale(scale), *(_exponent(e) for e, _, _ in terms))
        feats = [f for _, f, _ in terms]
        self.inputs = tuple(dict.fromkeys(_input_of(f) for f in feats))
        self.log_inputs = self.inputs
        self.greater_than = {"G": 1.0} if "G" in self.inputs else {}

    def features(self, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Log features and the design matrix [1, ±log x_j] (log y = design @ theta)."""
        out = super().features(data)
        if "G" in self.inputs:
            out["loglog2G"] = np.log(np.log2(out["G"]))
        n = len(out[self.inputs[0]])
        out["design"] = np.stack([np.ones(n)] + [s * out[f] for _, f, s in self.terms], axis=1)
        return out

    def _log_predict(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        return X["design"] @ theta

    def _log_jacobian(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        return X["design"]


def _input_of(feature: str) -> str:
    return {"loglog2G": "G"}.get(feature, feature.removeprefix("log"))


OUYANG = "Ouyang et al. 2024, Low-Bit Quantization Favors Undertrained LLMs, arXiv 2411.17691"
CHEN = "Chen et al. 2025, Scaling Law for Quantization-Aware Training, arXiv 2505.14302"
KUMAR = "Kumar et al. 2024, Scaling Laws for Precision, arXiv 2411.04330"

QID_TERMS = {"alpha": ("logN", -1.0), "beta": ("logD", 1.0), "gamma": ("logP", -1.0)}


def qid_law(exponents: tuple[str, ...] = ("alpha", "beta", "gamma"), name: str = "qid") -> PowerLaw:
    terms = tuple((e, *QID_TERMS[e]) for e in exponents)
    return PowerLaw(name, terms, "qid", "QiD = k·D^beta / (N^alpha·P^gamma) (terms as named)", OUYANG)


def qat_law(variant: str | None = None) -> PowerLaw:
    terms = (("gamma_N", "logN", -1.0), ("gamma_D", "logD", 1.0), ("gamma_G", "loglog2G", 1.0))
    name = f"qat_{variant.lower()}" if variant else "qat"
    return PowerLaw(name, terms, "delta", "delta = k·D^gamma_D·(log2 G)^gamma_G / N^gamma_N", CHEN, variant=variant)


class PrecisionPTQ(LawForm):
    """Kumar et al. 2024 eq. for PTQ degradation: δ = C_T·D^γD/N^γN·exp(−P/γ_post) (SPEC §3)."""

    name = "precision_ptq"
    target = "delta"
    inputs = ("N", "D", "P")
    log_inputs = ("N", "D")
    description = "delta = C_T·D^gamma_D / N^gamma_N · exp(-P/gamma_post)"
    citation = KUMAR
    params = (
        _scale("C_T"),
        _exponent("gamma_D"),
        _exponent("gamma_N"),
        Param("gamma_post", 1e-3, 1e3, log=True, grid=(0.5, 2.0)),
    )

    def _log_predict(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        return theta[0] + theta[1] * X["logD"] - theta[2] * X["logN"] - X["P"] * np.exp(-theta[3])

    def _log_jacobian(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        n = len(X["P"])
        return np.stack([np.ones(n), X["logD"], -X["logN"], X["P"] * np.exp(-theta[3])], axis=1)


class QidPerBit(PerLabelForm):
    """QiD = k_P·D^β / N^α with one k per bit width P (SPEC §1: the headline table's form)."""

    name = "qid_per_bit"
    target = "qid"
    inputs = ("N", "D", "P")
    log_inputs = ("N", "D", "P")
    label_input = "P"
    label_param = "k"
    label_spec = _scale("k")
    base_params = (_exponent("alpha"), _exponent("beta"))
    description = "QiD = k[P]·D^beta / N^alpha, one k per bit width"
    citation = OUYANG

    def _log_predict(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.label_values(theta, X) - theta[0] * X["logN"] + theta[1] * X["logD"]

    def _log_jacobian(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        onehot = (X["idx"][:, None] == np.arange(len(self.params) - 2)[None, :]).astype(float)
        return np.concatenate([-X["logN"][:, None], X["logD"][:, None], onehot], axis=1)
