"""Law forms: named, bounded parameters and a vectorised prediction.

A form knows the input columns it needs, which of them enter through a logarithm (so must be
positive), its parameters with natural bounds and a grid of starting values, and how to compute
``log y`` from *internal* coordinates ``theta`` (log of scale parameters, exponents as they are), the
well-conditioned parameterisation the fit works in (Hoffmann et al. 2022, approach 3). Parameters named
``name[label]`` are per-label (one value per precision / bit width) and are nested as
``{"name": {label: value}}`` in the natural-parameter dictionaries users see.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from qscale.errors import QscaleError
from qscale.laws.data import check_inputs, label_of, labels_of

Params = dict[str, object]  # natural parameters: name -> float, or name -> {label: float}


@dataclass(frozen=True)
class Param:
    """One parameter: natural bounds, whether it is fitted as its logarithm, starting values."""

    name: str
    lower: float
    upper: float
    log: bool = False
    grid: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.lower < self.upper or (self.log and self.lower <= 0):
            raise QscaleError(f"parameter {self.name!r}: invalid bounds ({self.lower}, {self.upper})")

    @property
    def bounds(self) -> tuple[float, float]:
        """Bounds in internal coordinates."""
        return (np.log(self.lower), np.log(self.upper)) if self.log else (self.lower, self.upper)

    def to_internal(self, value: float) -> float:
        return float(np.log(value)) if self.log else float(value)

    def to_natural(self, value: float) -> float:
        return float(np.exp(value)) if self.log else float(value)


_LABELLED = re.compile(r"^(\w+)\[(.+)\]$")


class LawForm:
    """Base class. Subclasses set ``name``, ``inputs``, ``log_inputs``, ``params`` and ``_log_predict``."""

    name: str = ""
    target: str = "loss"  # the default target column
    inputs: tuple[str, ...] = ()
    log_inputs: tuple[str, ...] = ()  # inputs that enter through a logarithm (must be > 0)
    greater_than: Mapping[str, float] = {}  # strict lower limits beyond log_inputs > 0, e.g. {"G": 1}
    label_input: str | None = None  # input holding labels (per-label parameters)
    labels: tuple[str, ...] | None = None  # labels a bound per-label form covers
    params: tuple[Param, ...] = ()
    description: str = ""
    citation: str = ""
    fixed: Mapping[str, float] = {}  # labelled parameters held fixed, e.g. {"eff[16]": 1.0}

    # ---- structure -------------------------------------------------------------------------
    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def bind(self, data: Mapping[str, np.ndarray]) -> LawForm:
        """The form specialised to ``data`` (per-label parameters for the labels present)."""
        return self

    def features(self, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Arrays ``_log_predict`` needs, computed once per data set."""
        out: dict[str, np.ndarray] = {}
        for c in self.inputs:
            if c == self.label_input:
                continue
            x = np.asarray(data[c], dtype=float)
            out[c] = x
            if c in self.log_inputs:
                out["log" + c] = np.log(x)
        return out

    def _log_predict(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _log_jacobian(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """d log y / d theta, shape (n, p); None means finite differences."""
        return None

    # ---- parameter conversion ---------------------------------------------------------------
    def flatten(self, params: Mapping[str, object]) -> dict[str, float]:
        """Natural nested params -> flat ``name`` / ``name[label]`` floats (unknown names rejected)."""
        flat: dict[str, float] = {}
        for k, v in params.items():
            if isinstance(v, Mapping):
                for lab, x in v.items():
                    flat[f"{k}[{label_of(lab)}]"] = float(x)
            else:
                flat[k] = float(v)  # type: ignore[arg-type]  # a user's value: a non-number raises here
        missing = [n for n in self.param_names if n not in flat]
        if missing:
            raise QscaleError(f"law {self.name!r}: missing parameter(s) {', '.join(missing)}")
        return flat

    def nest(self, flat: Mapping[str, float]) -> Params:
        """Flat names -> natural nested dictionary (fixed labelled values included)."""
        out: Params = {}
        groups: dict[str, dict[str, float]] = {}
        for k, v in {**flat, **self.fixed}.items():
            m = _LABELLED.match(k)
            if m:
                group = groups.setdefault(m.group(1), {})
                out.setdefault(m.group(1), group)
                group[m.group(2)] = float(v)
            else:
                out[k] = float(v)
        return out

    def to_internal(self, params: Mapping[str, object]) -> np.ndarray:
        flat = self.flatten(params)
        theta = np.array([p.to_internal(flat[p.name]) for p in self.params])
        if not np.all(np.isfinite(theta)):
            raise QscaleError(f"law {self.name!r}: parameters must be finite (and positive for scales)")
        return theta

    def to_natural(self, theta: np.ndarray) -> Params:
        return self.nest({p.name: p.to_natural(t) for p, t in zip(self.params, theta, strict=True)})

    def bounds(self) -> list[tuple[float, float]]:
        return [p.bounds for p in self.params]

    def start_grid(self) -> np.ndarray:
        """Cartesian grid of starting points in internal coordinates, shape (S, p)."""
        axes = [[p.to_internal(v) for v in (p.grid or (_default_start(p),))] for p in self.params]
        return np.array(list(itertools.product(*axes)), dtype=float)

    # ---- public evaluation ------------------------------------------------------------------
    def for_params(self, params: Mapping[str, object]) -> LawForm:
        """The form matching ``params`` (per-label forms take their labels from them)."""
        return self

    def predict(self, params: Mapping[str, object], inputs: Mapping[str, object]) -> np.ndarray:
        """The law's value at ``inputs`` (scalars or arrays, broadcast) with natural ``params``."""
        form = self.for_params(params)
        theta = form.to_internal(params)
        data = check_inputs(form, inputs)
        shape = np.broadcast_shapes(*(np.asarray(inputs[c]).shape for c in form.inputs))
        return np.exp(form._log_predict(theta, form.features(data))).reshape(shape)


def _default_start(p: Param) -> float:
    if p.log:
        return float(np.sqrt(p.lower * p.upper)) if p.upper / p.lower < 1e6 else 1.0
    return float(np.clip(0.0, p.lower, p.upper)) if p.lower <= 0 <= p.upper else (p.lower + p.upper) / 2


def log_sum_exp_terms(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log(sum(exp(terms), axis=0)) and the softmax weights, for terms of shape (k, n)."""
    m = terms.max(axis=0)
    e = np.exp(terms - m)
    s = e.sum(axis=0)
    return m + np.log(s), e / s


def _label_sort_key(label: str) -> tuple[float, str]:
    try:
        return (float(label), label)
    except ValueError:
        return (float("inf"), label)


class PerLabelForm(LawForm):
    """A form with one value of ``label_param`` per label found in column ``label_input``.

    ``reference`` (if set) is the label whose value is fixed to 1 (e.g. ``eff["16"] = 1``); the others
    are fitted. Unbound forms have no per-label parameters; :meth:`bind` adds them for the data's labels.
    """

    label_param: str = ""
    label_spec: Param = Param("label", 1e-6, 1e6, log=True)
    reference: str | None = None
    base_params: tuple[Param, ...] = ()

    def __init__(self) -> None:
        self.params = self.base_params

    def with_labels(self, labels: Iterable[object]) -> PerLabelForm:
        found = tuple(sorted({label_of(x) for x in labels}, key=_label_sort_key))
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.labels = found
        spec = self.label_spec
        new.params = self.base_params + tuple(
            Param(f"{self.label_param}[{lab}]", spec.lower, spec.upper, spec.log, spec.grid)
            for lab in found
            if lab != self.reference
        )
        new.fixed = {f"{self.label_param}[{self.reference}]": 1.0} if self.reference else {}
        return new

    def bind(self, data: Mapping[str, np.ndarray]) -> PerLabelForm:
        assert self.label_input is not None  # every per-label form names its label column
        labels = set(labels_of(data[self.label_input]))
        if self.reference is not None and self.reference not in labels:
            raise QscaleError(
                f"law {self.name!r} needs reference rows with {self.label_input} = {self.reference!r} "
                f"(found {', '.join(sorted(labels, key=_label_sort_key))})"
            )
        return self.with_labels(labels)

    def for_params(self, params: Mapping[str, object]) -> PerLabelForm:
        values = params.get(self.label_param)
        if not isinstance(values, Mapping):
            raise QscaleError(f"law {self.name!r}: parameter {self.label_param!r} must map labels to values")
        labels = {label_of(k) for k in values} | ({self.reference} if self.reference else set())
        return self.with_labels(labels)

    def features(self, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().features(data)
        assert self.labels is not None and self.label_input is not None  # a bound form (bind, for_params)
        fitted = [lab for lab in self.labels if lab != self.reference]
        index = {lab: i for i, lab in enumerate(fitted)}
        index.update({self.reference: -1} if self.reference else {})
        out["idx"] = np.array([index[lab] for lab in labels_of(data[self.label_input])], dtype=int)
        return out

    def label_values(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per-row internal value of the labelled parameter (0 for the reference label)."""
        n_fitted = len(self.params) - len(self.base_params)
        return np.append(theta[len(self.base_params) :][:n_fitted], 0.0)[X["idx"]]
