"""Which method wins at a scale nobody here can train: each method's fitted law evaluated at a target
(N, D, P) by the laws engine, with a 95% percentile interval over its bootstrap refits (SPEC §5), and
whether the intervals of neighbouring methods separate (lower QiD = less damage = better)."""

from __future__ import annotations

import math

import numpy as np

from qscale.laws import Bootstrap, predict

LEVEL = 0.95


def predict_at(law: str, params: dict, boot: Bootstrap | None, target: tuple[float, float, float]) -> dict:
    """The law at ``target`` = (N, D, P) and its bootstrap interval (NaN bounds without refits)."""
    inputs = dict(zip(("N", "D", "P"), map(float, target)))
    value = float(predict(law, params, inputs))
    lo = hi = float("nan")
    if boot is not None and len(boot.samples):
        preds = [float(predict(law, dict(zip(boot.names, s)), inputs)) for s in boot.samples]
        lo, hi = (float(x) for x in np.percentile(preds, [50 * (1 - LEVEL), 50 * (1 + LEVEL)]))
    return {**inputs, "qid": value, "ci": (lo, hi), "n_boot": 0 if boot is None else len(boot.samples)}


def rank_methods(fits: dict, target: tuple[float, float, float] | None) -> dict | None:
    """Methods ordered by predicted QiD at ``target``; each says whether its interval lies wholly below the
    next one's, and ``best_resolved`` whether the winner's interval lies below every other method's."""
    if target is None:
        return None
    have = sorted(((m, f.target) for m, f in fits.items() if f.target is not None), key=lambda mt: mt[1]["qid"])
    order = []
    for i, (m, t) in enumerate(have):
        nxt = have[i + 1][1] if i + 1 < len(have) else None
        sep = None if nxt is None else bool(t["ci"][1] < nxt["ci"][0])  # NaN bounds compare False
        order.append({"method": m, "qid": t["qid"], "ci": t["ci"], "separated_from_next": sep})
    best_resolved = bool(len(have) >= 2 and all(have[0][1]["ci"][1] < t["ci"][0] for _, t in have[1:]))
    return {"target": dict(zip(("N", "D", "P"), target)), "order": order,
            "best": have[0][0] if have else None, "best_resolved": best_resolved,
            "not_fitted": [m for m, f in fits.items() if f.target is None]}


def ranking_markdown(ranking: dict | None) -> list[str]:
    """The report section: one table row per method, then the verdict."""
    if ranking is None:
        return []
    t = ranking["target"]
    lines = ["## Methods ranked at the target", "",
             f"Each method's fitted law at N = {t['N']:.3g}, D = {t['D']:.3g}, P = {t['P']:g} bits; 95% interval over "
             "its bootstrap refits. Lower QiD is less damage.", "",
             "| rank | method | predicted QiD | 95% interval | interval below the next? |", "|---|---|---|---|---|"]
    for i, r in enumerate(ranking["order"], start=1):
        lo, hi = r["ci"]
        ci = f"[{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) else "n/a"
        sep = {None: "—", True: "yes", False: "no (overlap)"}[r["separated_from_next"]]
        lines.append(f"| {i} | {r['method']} | {r['qid']:.3g} | {ci} | {sep} |")
    if ranking["not_fitted"]:
        lines.append(f"\nNot ranked (no fitted law): {', '.join(ranking['not_fitted'])}.")
    if ranking["best"] is not None and len(ranking["order"]) >= 2:
        verdict = ("its interval lies below every other method's: the ranking is resolved" if ranking["best_resolved"]
                   else "its interval overlaps another method's: the data do not separate them at this scale")
        lines += ["", f"Best at the target: **{ranking['best']}**; {verdict}."]
    return lines + [""]
