"""Plots of laws (matplotlib, Agg backend): observed vs fitted with the parity plot, and law curves for reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from qscale.laws.data import labels_of
from qscale.laws.fit import FitResult, get_form
from qscale.laws.forms import LawForm
from qscale.laws.plot_style import distinct_colors, readable_log_axes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _x_axis(form: LawForm) -> str:
    for c in ("D", "N", "P", "G"):
        if c in form.inputs and c != form.label_input:
            return c
    return form.inputs[0]


def plot_observed_vs_predicted(
    fit: FitResult,
    data: Mapping[str, object],
    path: str | Path | None = None,
    x: str | None = None,
    n_curve: int = 64,
    max_groups: int = 12,
):
    """The parity plot (observed against predicted, log-log, y = x; predicted on x as in the study reports),
    always; beside it, when the other inputs form at most ``max_groups`` groups (a grid), the observed points
    and the fitted law against ``x`` (default D), one line per group. Returns the figure, saved to ``path``."""
    plt = _pyplot()
    form = fit.law
    x = x or _x_axis(form)
    others = [c for c in form.inputs if c != x]
    xs = np.asarray(data[x], dtype=float)
    y = np.asarray(data[fit.target], dtype=float)
    keys = [tuple(labels_of(data[c])[i] for c in others) for i in range(len(xs))]
    groups = sorted(set(keys), key=lambda k: [_num(v) for v in k])
    lines = len(groups) <= max_groups
    fig, axes = plt.subplots(1, 2 if lines else 1, figsize=(13, 5) if lines else (7, 5), squeeze=False)
    colors = distinct_colors(len(groups)) if lines else distinct_colors(1)
    if lines:
        ax = axes[0][0]
        for color, key in zip(colors, groups, strict=True):
            rows = np.array([k == key for k in keys])
            label = ", ".join(f"{c}={v}" for c, v in zip(others, key, strict=True)) or fit.target
            ax.scatter(xs[rows], y[rows], s=14, color=color, label=label)
            grid = np.geomspace(xs[rows].min(), xs[rows].max(), n_curve) if xs[rows].min() > 0 else np.sort(xs[rows])
            inputs = {c: np.asarray(data[c], dtype=object)[rows][0] for c in others}
            ax.plot(grid, fit.predict({**inputs, x: grid}), color=color, lw=1.2)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel=x,
            ylabel=fit.target,
            title=f"{form.name}: observed (points) vs fitted (lines)",
        )
        readable_log_axes(ax)
        ax.legend(fontsize=7)
    _parity(axes[0][-1], fit, data, y, colors if lines else None, groups, keys)
    return _save(fig, path)


def _parity(ax, fit: FitResult, data, y: np.ndarray, colors, groups, keys) -> None:
    """Observed against predicted with the y = x line; coloured by group when the groups are drawn."""
    pred = np.asarray(fit.predict(data), dtype=float)
    if colors is None:
        ax.scatter(pred, y, s=12, color=distinct_colors(1)[0])
    else:
        for color, key in zip(colors, groups, strict=True):
            rows = np.array([k == key for k in keys])
            ax.scatter(pred[rows], y[rows], s=12, color=color)
    pos = y[y > 0]
    lims = [min(pos.min(initial=pred.min()), pred.min()), max(y.max(), pred.max())]
    ax.plot(lims, lims, color="k", lw=1)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel=f"predicted {fit.target}",
        ylabel=f"observed {fit.target}",
        title=f"{fit.law.name}: observed vs predicted, R²(log) = {fit.r2_log:.3f}",
    )
    readable_log_axes(ax)


def plot_law_curves(
    law: LawForm | str,
    params: Mapping[str, object],
    x: str,
    x_values: Sequence[float],
    series: Sequence[Mapping[str, object]],
    path: str | Path | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    ax=None,
):
    """One curve per entry of ``series`` (fixed values of the other inputs), law against ``x`` (log-log).

    Example: ``plot_law_curves("qid", params, "D", np.geomspace(1e9, 1e14), [{"N": 7e9, "P": 4}, ...])``.
    """
    plt = _pyplot()
    form = get_form(law)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 5))
    else:
        fig = ax.figure
    xv = np.asarray(x_values, dtype=float)
    for color, fixed in zip(distinct_colors(len(series)), series, strict=True):
        label = ", ".join(f"{c}={_fmt(v)}" for c, v in fixed.items())
        ax.plot(xv, form.predict(params, {**fixed, x: xv}), label=label, color=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    readable_log_axes(ax)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or form.target)
    ax.set_title(title or form.name)
    if series:
        ax.legend(fontsize=7)
    return _save(fig, path)


def _num(v: str) -> tuple[float, str]:
    try:
        return (float(v), v)
    except ValueError:
        return (float("inf"), v)


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, (float, np.floating)) else str(v)
