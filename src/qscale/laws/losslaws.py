"""Loss laws with an irreducible term, fitted in log space as log-sum-exp (Hoffmann et al. 2022, approach 3).

- ``chinchilla`` (Hoffmann et al. 2022; SPEC §5): L(N, D) = E + A/N^α + B/D^β, internally
  log L = LSE(a − α·log N, b − β·log D, e) with a = log A, b = log B, e = log E, started from the
  paper's grid (α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}).
- ``effective_params`` (QuEST, Panferov et al. 2025, arXiv 2502.05003; Kumar et al. 2024; SPEC §3–4):
  L(N, D, P) = A/(N·eff(P))^α + B/D^β + E, one eff per label of column ``precision``; label "16" is the
  reference with eff = 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qscale.laws.forms import LawForm, Param, PerLabelForm, log_sum_exp_terms

HOFFMANN = "Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, arXiv 2203.15556 (approach 3)"
QUEST = "Panferov et al. 2025, QuEST: Stable Training of LLMs with 1-Bit Weights and Activations, arXiv 2502.05003"

_EXP_GRID = (0.0, 0.5, 1.0, 1.5, 2.0)
_AB_GRID = tuple(float(np.exp(a)) for a in (0, 5, 10, 15, 20, 25))
_E_GRID = tuple(float(np.exp(e)) for e in (-1.0, -0.5, 0.0, 0.5, 1.0))

CHINCHILLA_PARAMS = (
    Param("A", 1e-6, 1e20, log=True, grid=_AB_GRID),
    Param("B", 1e-6, 1e20, log=True, grid=_AB_GRID),
    Param("E", 1e-6, 1e3, log=True, grid=_E_GRID),
    Param("alpha", 0.0, 5.0, grid=_EXP_GRID),
    Param("beta", 0.0, 5.0, grid=_EXP_GRID),
)


def _lse_jacobian(s: np.ndarray, logN_eff: np.ndarray, logD: np.ndarray) -> np.ndarray:
    """d log L / d (a, b, e, alpha, beta) given softmax weights s of the three terms."""
    return np.stack([s[0], s[1], s[2], -s[0] * logN_eff, -s[1] * logD], axis=1)


class Chinchilla(LawForm):
    """L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, eq. 2)."""

    name = "chinchilla"
    target = "loss"
    inputs = ("N", "D")
    log_inputs = ("N", "D")
    params = CHINCHILLA_PARAMS
    description = "L = E + A/N^alpha + B/D^beta"
    citation = HOFFMANN

    def _terms(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        a, b, e, alpha, beta = theta[:5]
        return np.stack([a - alpha * X["logN"], b - beta * X["logD"], np.full(len(X["logN"]), e)])

    def _log_predict(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        return log_sum_exp_terms(self._terms(theta, X))[0]

    def _log_jacobian(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        _, s = log_sum_exp_terms(self._terms(theta, X))
        return _lse_jacobian(s, X["logN"], X["logD"])


class EffectiveParams(PerLabelForm):
    """L = A/(N·eff(P))^α + B/D^β + E, eff per precision label, eff("16") = 1 (QuEST; SPEC §4)."""

    name = "effective_params"
    target = "loss"
    inputs = ("N", "D", "precision")
    log_inputs = ("N", "D")
    label_input = "precision"
    label_param = "eff"
    label_spec = Param("eff", 1e-6, 1e3, log=True, grid=(0.5,))
    reference = "16"
    base_params = CHINCHILLA_PARAMS
    description = "L = A/(N·eff[precision])^alpha + B/D^beta + E, eff[16] = 1"
    citation = QUEST

    def _terms(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        a, b, e, alpha, beta = theta[:5]
        logN_eff = X["logN"] + self.label_values(theta, X)
        terms = np.stack([a - alpha * logN_eff, b - beta * X["logD"], np.full(len(logN_eff), e)])
        return terms, logN_eff

    def _log_predict(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        return log_sum_exp_terms(self._terms(theta, X)[0])[0]

    def _log_jacobian(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        terms, logN_eff = self._terms(theta, X)
        _, s = log_sum_exp_terms(terms)
        base = _lse_jacobian(s, logN_eff, X["logD"])
        n_eff = len(self.params) - len(self.base_params)
        onehot = (X["idx"][:, None] == np.arange(n_eff)[None, :]).astype(float)
        return np.concatenate([base, -theta[3] * s[0][:, None] * onehot], axis=1)
