"""Evaluate a fitted or published law, and invert it: the N, D, P or G at which it reaches a value.

Power laws (``qid*``, ``qat*``, ``precision_ptq``) are affine in log y along the solved variable's
feature (log x, P itself, or log log2 G) and are inverted in closed form; ``chinchilla`` and
``effective_params`` are solved in closed form for N or D (A/N^α = L − E − B/D^β); anything else
(user forms) by Brent's method on log x. Example (SPEC §1): the D at which a 70B model at 4 bits
reaches QiD = 0.2 under the unified GPTQ law is ``invert("qid", ouyang, {"N": 70e9, "P": 4}, 0.2, "D")``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.optimize import brentq

from qscale.errors import QscaleError
from qscale.laws.data import check_column, data_row, labels_of
from qscale.laws.fit import get_form
from qscale.laws.forms import LawForm
from qscale.laws.losslaws import Chinchilla, EffectiveParams
from qscale.laws.powerlaws import PowerLaw, PrecisionPTQ, QidPerBit

BRACKET = (-60.0, 120.0)  # log x search range for numerical inversion (x from 1e-26 to 1e52)


def predict(law: LawForm | str, params: Mapping[str, object], inputs: Mapping[str, object]) -> np.ndarray:
    """The law's value at ``inputs`` (scalars or arrays, broadcast together)."""
    return get_form(law).predict(params, inputs)


def _feature(form: LawForm, var: str) -> tuple:
    """(g, g⁻¹) with log y affine in g(var), for the log-affine forms."""
    if var == "G":
        return (lambda v: np.log(np.log2(v))), (lambda g: 2.0 ** np.exp(g))
    if isinstance(form, PrecisionPTQ) and var == "P":
        return (lambda v: v), (lambda g: g)
    return np.log, np.exp


def invert(
    law: LawForm | str, params: Mapping[str, object], inputs: Mapping[str, object], value: object, solve_for: str
) -> np.ndarray:
    """The value of input ``solve_for`` at which the law equals ``value``, given the other inputs."""
    form = get_form(law).for_params(params)
    if solve_for not in form.inputs or solve_for == form.label_input:
        solvable = [c for c in form.inputs if c != form.label_input]
        raise QscaleError(f"law {form.name!r} can be solved for {', '.join(solvable)}, not {solve_for!r}")
    given = {c: inputs[c] for c in form.inputs if c != solve_for and c in inputs}
    missing = [c for c in form.inputs if c != solve_for and c not in given]
    if missing:
        raise QscaleError(f"solving law {form.name!r} for {solve_for} needs {', '.join(missing)}")
    shape = np.broadcast_shapes(np.asarray(value).shape, *(np.asarray(v).shape for v in given.values()))
    target = check_column("value", np.broadcast_to(np.asarray(value, dtype=float), shape), greater_than=0.0)
    others = {c: np.broadcast_to(np.asarray(v), shape).ravel() for c, v in given.items()}

    if isinstance(form, (PowerLaw, PrecisionPTQ, QidPerBit)):
        g, g_inv = _feature(form, solve_for)
        x1, x2 = (3.0, 9.0) if solve_for == "G" else (2.0, 8.0)  # two points where g is defined
        y1 = np.log(form.predict(params, {**others, solve_for: x1}))
        y2 = np.log(form.predict(params, {**others, solve_for: x2}))
        slope = (y2 - y1) / (g(x2) - g(x1))
        if np.any(slope == 0):
            raise QscaleError(f"law {form.name!r} does not depend on {solve_for} with these parameters")
        out = g_inv(g(x1) + (np.log(target) - y1) / slope)
    elif isinstance(form, (Chinchilla, EffectiveParams)) and solve_for in ("N", "D"):
        out = _invert_loss(form, params, others, target, solve_for)
    else:
        out = np.array(
            [_brent(form, params, {c: v[i] for c, v in others.items()}, t, solve_for) for i, t in enumerate(target)]
        )
    return np.asarray(out, dtype=float).reshape(shape)


def _invert_loss(
    form: LawForm, params: Mapping[str, object], others: Mapping[str, np.ndarray], target: np.ndarray, var: str
) -> np.ndarray:
    """L = E + A/(N·eff)^α + B/D^β solved for N or D (Hoffmann et al. 2022, eq. 2)."""
    p = {k: v for k, v in params.items()}
    A, B, E, alpha, beta = (float(p[k]) for k in ("A", "B", "E", "alpha", "beta"))  # type: ignore[arg-type]
    eff: float | np.ndarray = 1.0
    if isinstance(form, EffectiveParams):
        given = p["eff"]
        assert isinstance(given, Mapping)  # the per-label form's for_params checked it
        table = {str(k): float(v) for k, v in given.items()}
        table.setdefault("16", 1.0)
        eff = np.array([table[lab] for lab in labels_of(others["precision"])])
    if var == "N":
        rest = target - E - B / check_column("D", others["D"], 0.0) ** beta
        scale, exponent = A, alpha
    else:
        rest = target - E - A / (check_column("N", others["N"], 0.0) * eff) ** alpha
        scale, exponent = B, beta
    bad = np.flatnonzero(rest <= 0)
    if bad.size:
        raise QscaleError(
            f"loss {target[bad[0]]:g} is not reachable by varying {var} ({data_row(bad[0])}): "
            "it is at or below the law's floor given the other inputs"
        )
    x = (scale / rest) ** (1.0 / exponent)
    return x / eff if var == "N" else x


def _brent(form: LawForm, params: Mapping[str, object], others: Mapping[str, object], target: float, var: str) -> float:
    def f(u: float) -> float:
        return float(np.log(form.predict(params, {**others, var: np.exp(u)}))) - np.log(target)

    lo, hi = BRACKET
    try:
        flo, fhi = f(lo), f(hi)
    except QscaleError:
        raise QscaleError(
            f"cannot solve law {form.name!r} for {var}: the law is undefined at the bracket ends"
        ) from None
    if not np.isfinite(flo) or not np.isfinite(fhi) or flo * fhi > 0:
        raise QscaleError(f"no {var} in [{np.exp(lo):.3g}, {np.exp(hi):.3g}] makes law {form.name!r} reach {target:g}")
    return float(np.exp(brentq(f, lo, hi, xtol=1e-12, rtol=1e-13)))
