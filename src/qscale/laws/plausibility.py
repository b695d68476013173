"""Warnings on a prediction a user should not take at face value (SPEC §5, validation).

Three checks, each a sentence in the output of ``qscale predict`` (never an error: the number is still
printed, with the reason to doubt it):

- **far outside the fitted range**: N or D more than 10x beyond what the fit saw (G 4x, bits 2 beyond) --
  the held-out checks of a study validate a step of one model size or one checkpoint, not orders of
  magnitude;
- **physically implausible**: a QiD (or QAT δ) above the model's full-precision loss when that is known
  (``--loss-fp``, a study's measured losses, the Pythia fit of Ouyang et al. 2024 for their published
  sets), or else above ln(256,000) ≈ 12.5 nats, the loss of a uniform guess over the largest common
  vocabularies;
- **an exponent of the wrong sign**: a fitted exponent below 0 where the paper's sign is known
  (Ouyang et al. 2024: α, β, γ > 0, SPEC §1; Chen et al. 2025: γ_N, γ_D, γ_G > 0, SPEC §2; Kumar et al.
  2024: γ_D, γ_N > 0, SPEC §3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

FAR_FACTOR = {"N": 10.0, "D": 10.0, "G": 4.0}  # beyond the fitted range by more than this factor
FAR_BITS = 2.0  # bit widths: more than this many bits outside the fitted range
UNIFORM_NATS = math.log(256_000)  # ≈ 12.45: uniform guess over a 256K-token vocabulary

# Exponents whose sign the papers establish (all positive in these forms), with what a positive sign means.
PAPER_SIGNS: dict[str, dict[str, str]] = {
    "qid": {"alpha": "QiD falls with N", "beta": "QiD grows with D", "gamma": "QiD falls with more bits"},
    "qat": {"gamma_N": "δ falls with N", "gamma_D": "δ grows with D", "gamma_G": "δ grows with the group size"},
    "precision_ptq": {"gamma_D": "the PTQ loss grows with D", "gamma_N": "the PTQ loss falls with N"},
}
DAMAGE_TARGETS = ("qid", "delta")  # targets that are a loss difference, bounded by the full-precision loss


def _family(law: str) -> str:
    if law.startswith("qid"):
        return "qid"
    return "qat" if law.startswith("qat") else law


def range_warnings(ranges: Mapping[str, Sequence[float]], values: Mapping[str, object]) -> list[str]:
    """A warning per input far outside the fitted range (N, D 10x; G 4x; bits 2 bits)."""
    out = []
    for name, value in values.items():
        if name not in ranges or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        lo, hi = float(ranges[name][0]), float(ranges[name][1])
        if name == "P":
            gap = max(lo - value, value - hi)
            if gap > FAR_BITS:
                out.append(
                    f"{name} = {value:g} bits is {gap:g} bits outside the fitted range {lo:g}–{hi:g}: "
                    "the law's bit-width dependence was not measured there"
                )
            continue
        factor = FAR_FACTOR.get(name)
        if factor is None or lo <= 0 or value <= 0:
            continue
        ratio = max(lo / value, value / hi)
        if ratio > factor:
            side = "largest" if value > hi else "smallest"
            edge = hi if value > hi else lo
            out.append(
                f"{name} = {value:.3g} is {ratio:,.3g}x beyond the {side} fitted {name} ({edge:.3g}): held-out "
                "checks validate one step beyond the data, not this far; treat the number as a guess"
            )
    return out


def value_warnings(target: str, value: float, loss_fp: float | None = None, source: str = "") -> list[str]:
    """A warning when a predicted QiD / δ is physically implausible."""
    if target not in DAMAGE_TARGETS or not math.isfinite(value):
        return [] if math.isfinite(value) else [f"{target} = {value} is not a finite number"]
    if loss_fp is not None and math.isfinite(loss_fp) and value > loss_fp:
        return [
            f"{target} = {value:.3g} nats is above the model's full-precision loss ({loss_fp:.3g} nats{source}): "
            "the quantized model would be more than twice as bad in loss; the law is outside where it can hold"
        ]
    if value > UNIFORM_NATS:
        return [
            f"{target} = {value:.3g} nats is above ln(256,000) = {UNIFORM_NATS:.1f} nats, the loss of a uniform "
            "guess over the largest common vocabularies: not physically plausible"
        ]
    return []


def sign_warnings(law: str, params: Mapping[str, object], ci: Mapping[str, object] | None = None) -> list[str]:
    """A warning per fitted exponent below 0 where the paper's sign is known (positive in these forms)."""
    out = []
    for name, meaning in PAPER_SIGNS.get(_family(law), {}).items():
        v = params.get(name)
        if not isinstance(v, (int, float)) or v >= 0:
            continue
        lohi = (ci or {}).get(name)
        how = ""
        if isinstance(lohi, (list, tuple)) and len(lohi) == 2 and lohi[0] is not None and lohi[1] is not None:
            how = "; its 95% CI lies below 0" if lohi[1] < 0 else "; its 95% CI includes 0 (not resolved)"
        out.append(
            f"fitted {name} = {v:.3g} < 0 where the paper finds {meaning} ({name} > 0){how}: extrapolations "
            "follow the opposite direction"
        )
    return out


def fp_loss_bound(fp_losses: Sequence[Mapping[str, float]], N: float, D: float) -> float | None:
    """An upper bound on the full-precision loss at (N, D) from measured checkpoints: the lowest loss among
    those with N' <= N and D' <= D (loss falls with N and with D). None when no checkpoint is that small."""
    below = [float(r["loss_fp"]) for r in fp_losses if float(r["N"]) <= N and float(r["D"]) <= D]
    return min(below) if below else None


def pythia_loss16(N: float, D: float) -> float:
    """Ouyang et al. 2024's full-precision loss fitted on Pythia (SPEC §1):
    Loss16 = [(4.74e19 / N)^(0.045/0.399) + 7.63e10 / D]^0.399."""
    return ((4.74e19 / N) ** (0.045 / 0.399) + 7.63e10 / D) ** 0.399
