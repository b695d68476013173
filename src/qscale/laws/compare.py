"""Rank methods at a target scale by their fitted laws: which one loses least at (N, D, P), and is it resolved?

Each method's law (a :class:`~qscale.laws.uncertainty.LawSamples`: point parameters and bootstrap samples)
is evaluated at the target with its 95% bootstrap interval (:func:`~qscale.laws.uncertainty.predict_interval`).
Methods are ordered by the predicted damage (QiD or δ: lower is better). Two methods are *separated* when
their intervals do not overlap -- a conservative test: non-overlapping 95% intervals imply a difference at
well beyond the 95% level, overlapping ones do not prove there is none. The best method *wins* at the target
when its interval is separated from every other method's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

from qscale.errors import QscaleError
from qscale.laws.uncertainty import Estimate, LawSamples, predict_interval


@dataclass(frozen=True)
class Ranked:
    """One method's place: its estimate and whether it is separated from the next-better method."""

    method: str
    estimate: Estimate
    separated_from_previous: bool | None  # None for the best method


@dataclass(frozen=True)
class Ranking:
    """Methods ordered by predicted damage at ``target`` (best first)."""

    target: dict[str, float]
    ranked: tuple[Ranked, ...]

    @property
    def best(self) -> str:
        return self.ranked[0].method

    @property
    def resolved(self) -> bool:
        """The best method's interval lies below every other method's interval."""
        first = self.ranked[0].estimate
        return len(self.ranked) > 1 and all(not first.overlaps(r.estimate) for r in self.ranked[1:])

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "best": self.best,
            "resolved": self.resolved,
            "methods": [
                {"method": r.method, **r.estimate.as_dict(), "separated_from_previous": r.separated_from_previous}
                for r in self.ranked
            ],
        }


def rank_methods(laws: Mapping[str, LawSamples], target: Mapping[str, float]) -> Ranking:
    """Each method's predicted value at ``target`` (e.g. ``{"N": 7e9, "D": 2e12, "P": 4}``) with its
    interval, best (lowest) first, and whether neighbouring intervals separate."""
    if not laws:
        raise QscaleError("no fitted method to rank")
    estimates = {m: predict_interval(law, target) for m, law in laws.items()}
    order = sorted(estimates, key=lambda m: (estimates[m].value, m))
    ranked = [Ranked(order[0], estimates[order[0]], None)]
    for prev, m in pairwise(order):
        ranked.append(Ranked(m, estimates[m], not estimates[prev].overlaps(estimates[m])))
    return Ranking({k: float(v) for k, v in target.items()}, tuple(ranked))
