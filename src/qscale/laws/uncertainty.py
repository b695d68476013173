"""95% intervals on what a fitted law says: its value at an input, or the input at which it reaches a value.

The bootstrap (``qscale.laws.bootstrap``, Besiroglu et al. 2024, SPEC §5) refits the law on resampled rows;
its converged parameter samples are stored with the fit (``qscale fit --json`` and a study's ``fit.json``:
``bootstrap = {"names", "samples", "level", ...}``). A prediction or an inversion is then computed under every
sample and its interval is the percentile interval of those values -- the uncertainty of the law's parameters
given the measured points (not of a new measurement).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qscale.errors import QscaleError
from qscale.laws.bootstrap import Bootstrap
from qscale.laws.fit import get_form
from qscale.laws.forms import LawForm
from qscale.laws.predict import invert, predict

MIN_SAMPLES = 20  # fewer bootstrap samples give no usable 95% interval


@dataclass(frozen=True)
class Estimate:
    """A value with its bootstrap percentile interval [lo, hi] at ``level``; ``n_failed`` samples had none."""

    value: float
    lo: float
    hi: float
    level: float
    n_samples: int
    n_failed: int = 0

    def overlaps(self, other: Estimate) -> bool:
        return not (self.hi < other.lo or other.hi < self.lo)

    def text(self, fmt: str = ".4g") -> str:
        return f"{self.value:{fmt}} ({self.level:.0%} CI {self.lo:{fmt}} – {self.hi:{fmt}})"

    def as_dict(self) -> dict[str, float]:
        return {
            "value": self.value,
            "lo": self.lo,
            "hi": self.hi,
            "level": self.level,
            "n_samples": self.n_samples,
            "n_failed": self.n_failed,
        }


def samples_record(boot: Bootstrap) -> dict[str, object]:
    """The JSON form of a bootstrap's parameter samples (what ``fit.json`` stores)."""
    return {
        "names": list(boot.names),
        "samples": boot.samples.tolist(),
        "level": boot.level,
        "n_boot": boot.n_boot,
        "n_failed": boot.n_failed,
    }


@dataclass(frozen=True)
class LawSamples:
    """Point parameters of a fitted law and its bootstrap parameter samples (flat names, natural units)."""

    law: str
    params: Mapping[str, object]
    names: tuple[str, ...]
    samples: np.ndarray  # (S, len(names))
    level: float = 0.95

    @classmethod
    def from_record(
        cls,
        law: str,
        params: Mapping[str, object],
        record: Mapping[str, Any] | None,
        where: str = "the parameter file",
    ) -> LawSamples:
        """Validate a stored ``bootstrap`` record; a missing or too small one is an error naming the file."""
        if not record:
            raise QscaleError(
                f"{where} has no bootstrap samples for law {law!r}: refit with a bootstrap "
                "(qscale fit --n-boot 200 --json, or re-run the study's report)"
            )
        try:
            names = tuple(str(n) for n in record["names"])
            samples = np.asarray(record["samples"], dtype=float)
            level = float(record.get("level", 0.95))
        except (KeyError, TypeError, ValueError) as e:
            raise QscaleError(f"{where}: malformed bootstrap record ({type(e).__name__}: {e})") from None
        if samples.ndim != 2 or samples.shape[1] != len(names):
            raise QscaleError(
                f"{where}: malformed bootstrap record (samples of shape {samples.shape} for "
                f"{len(names)} parameter names)"
            )
        if len(samples) < MIN_SAMPLES or not np.isfinite(samples).all() or not 0 < level < 1:
            raise QscaleError(
                f"{where}: the bootstrap record needs >= {MIN_SAMPLES} finite samples and a level "
                f"in (0, 1) (has {len(samples)} samples, level {level:g})"
            )
        form = get_form(law).for_params(params)
        missing = [n for n in form.param_names if n not in names]
        if missing:
            raise QscaleError(f"{where}: bootstrap samples lack parameter(s) {', '.join(missing)} of law {law!r}")
        return cls(law, dict(params), names, samples, level)

    def form(self) -> LawForm:
        return get_form(self.law).for_params(self.params)

    def sample_params(self) -> list[dict[str, object]]:
        form = self.form()
        return [form.nest(dict(zip(self.names, row, strict=True))) for row in self.samples]


def _summarise(point: float, values: np.ndarray, level: float) -> Estimate:
    """Percentile interval of the samples' values (outward nearest ranks, so an infinite value stays one)."""
    ok = ~np.isnan(values)
    if ok.sum() < MIN_SAMPLES:
        return Estimate(point, float("nan"), float("nan"), level, int(values.size), int((~ok).sum()))
    lo = np.percentile(values[ok], 100 * (1 - level) / 2, method="lower")
    hi = np.percentile(values[ok], 100 * (1 + level) / 2, method="higher")
    return Estimate(point, float(lo), float(hi), level, int(values.size), int((~ok).sum()))


def predict_interval(law: LawSamples, inputs: Mapping[str, object]) -> Estimate:
    """The law's value at one input point with its bootstrap interval."""
    form = law.form()
    point = float(predict(form, law.params, inputs))
    values = np.array([float(predict(form, p, inputs)) for p in law.sample_params()])
    return _summarise(point, values, law.level)


def invert_interval(law: LawSamples, inputs: Mapping[str, object], value: float, solve_for: str) -> Estimate:
    """The input ``solve_for`` at which the law reaches ``value``, with its bootstrap interval.

    A sample under which the value is unreachable (the law flat in ``solve_for``) counts in ``n_failed``;
    with fewer than ``MIN_SAMPLES`` solvable samples the interval is undefined (NaN).
    """
    form = law.form()
    point = float(invert(form, law.params, inputs, value, solve_for))
    out = []
    for p in law.sample_params():
        try:
            out.append(float(invert(form, p, inputs, value, solve_for)))
        except QscaleError:
            out.append(float("nan"))
    return _summarise(point, np.array(out), law.level)
