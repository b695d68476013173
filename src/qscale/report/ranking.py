"""Which method wins at a scale nobody here can train: the report's view of :mod:`qscale.laws.compare`.

Each fitted method's law is evaluated at the user's target (N, D, P) with its 95% bootstrap interval
(:func:`qscale.laws.uncertainty.predict_interval`), methods are ordered by predicted QiD (lower = less
damage) and neighbouring intervals are tested for separation (SPEC §5 bootstrap).
"""

from __future__ import annotations

import math

import numpy as np

from qscale.laws import LawSamples, rank_methods


def rank_at_target(law: str, fits: dict, target: tuple[float, float, float] | None) -> dict | None:
    """``fit.json``'s ``ranking``: the target, the fitted methods best first, and those not fitted."""
    if target is None:
        return None
    point = dict(zip(("N", "D", "P"), map(float, target), strict=True))
    laws = {}
    for m, f in fits.items():
        if f.params is not None:
            boot = f.bootstrap or {"names": [], "samples": np.empty((0, 0)), "level": 0.95}
            samples = np.asarray(boot["samples"], dtype=float).reshape(-1, len(boot["names"]))
            laws[m] = LawSamples(law, f.params, tuple(boot["names"]), samples, float(boot["level"]))
    not_fitted = [m for m, f in fits.items() if f.params is None]
    if not laws:
        return {"target": point, "best": None, "resolved": False, "methods": [], "not_fitted": not_fitted}
    return {**rank_methods(laws, point).as_dict(), "not_fitted": not_fitted}


def ranking_markdown(ranking: dict | None) -> list[str]:
    """The report section: one table row per method, then the verdict."""
    if ranking is None:
        return []
    t = ranking["target"]
    lines = [
        "## Methods ranked at the target",
        "",
        f"Each method's fitted law at N = {t['N']:.3g}, D = {t['D']:.3g}, P = {t['P']:g} bits, with the 95% "
        "interval of its bootstrap refits. Lower QiD is less damage; two methods are separated when their "
        "intervals do not overlap.",
        "",
        "| rank | method | predicted QiD | 95% interval | separated from the one above? |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(ranking["methods"], start=1):
        ci = f"[{r['lo']:.3g}, {r['hi']:.3g}]" if math.isfinite(r["lo"]) else "n/a (too few bootstrap refits)"
        sep = {None: "—", True: "yes", False: "no (overlap)"}[r["separated_from_previous"]]
        lines.append(f"| {i} | {r['method']} | {r['value']:.3g} | {ci} | {sep} |")
    if ranking["not_fitted"]:
        lines += ["", f"Not ranked (no fitted law): {', '.join(ranking['not_fitted'])}."]
    if len(ranking["methods"]) >= 2:
        verdict = (
            "its interval lies below every other method's: resolved"
            if ranking["resolved"]
            else "its interval overlaps another method's: the data do not separate them at this scale"
        )
        lines += ["", f"Best at the target: **{ranking['best']}**; {verdict}."]
    return [*lines, ""]
