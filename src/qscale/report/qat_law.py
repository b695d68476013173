"""The QAT law as the QAT report uses it (Chen et al. 2025, arXiv 2505.14302; SPEC §2): evaluated by the laws
engine, with the paper's constants taken from the published sets (``qscale.laws.published``)."""

from __future__ import annotations

import numpy as np

from qscale.evaluate.noise import NoisePolicy
from qscale.laws import LAWS, PUBLISHED, predict
from qscale.laws.published import CHEN_DECOMPOSITION_C, CHEN_FC2_REDUCTION_W4A4

PARAMS = ("k", "gamma_N", "gamma_D", "gamma_G")
PUBLISHED_SET = {
    "W4A4": "chen2025-w4a4",
    "W4A16": "chen2025-w4a16",
    "W16A4": "chen2025-w16a4",
    "W4A4-fc2a8": "chen2025-w4a4-fc2int8",
    "W16A4-fc2a8": "chen2025-w16a4-fc2int8",
}
PAPER_C = CHEN_DECOMPOSITION_C
PAPER_FC2 = (
    f"W4A4: {100 * CHEN_FC2_REDUCTION_W4A4[32]:.1f}% (G = 32) to {100 * CHEN_FC2_REDUCTION_W4A4[256]:.1f}% (G = 256)"
)


def paper_params(scheme: str) -> dict[str, float] | None:
    """The paper's fitted (k, γN, γD, γG) of ``scheme``, or None if it reports none."""
    name = PUBLISHED_SET.get(scheme)
    return None if name is None else {p: float(PUBLISHED[name].params[p]) for p in PARAMS}


def law_name(scheme: str) -> str:
    """The registered law form of ``scheme`` (its own start grid if registered, else the generic ``qat``)."""
    name = f"qat_{scheme.lower()}"
    return name if name in LAWS else "qat"


def predict_delta(params: dict[str, float], N, D, G) -> np.ndarray:
    """δ = k·D^γD·(log2 G)^γG / N^γN (Chen et al. 2025; SPEC §2), by the laws engine."""
    return predict("qat", params, {"N": N, "D": D, "G": G})


def noise_text(policy: NoisePolicy) -> str:
    return (
        f"held-out points with δ <= {policy.k:g} x their paired standard error (every δ <= 0 included) are "
        "excluded from the log-space fit and counted, never clipped; training-loss points with δ <= 0 likewise"
    )
