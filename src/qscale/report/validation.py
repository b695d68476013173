"""Held-out validation in the study reports (SPEC §5): the parity plot and the Markdown lines.

Each fitted method (QiD) or scheme (QAT) is refitted without its largest N and, separately, without its
largest D (``qscale.laws.validate``); the report shows the median and max |relative error| on the held-out
points and how many of them fall inside the 95% prediction interval, beside the exponents.
"""

from __future__ import annotations

import io
import math

import numpy as np

from qscale.laws.plot_style import distinct_colors
from qscale.report.plots import _log_axes, new_figure, to_png

HOLDS = ("N", "D")


def cell(v: dict | None) -> str:
    """``8.1% (max 20%), 11/12 in PI`` for a summary table, or why there is none."""
    if not v:
        return "n/a"
    if v.get("error"):
        return "n/a (" + _short(v["error"]) + ")"
    if not v.get("n_test"):
        return "n/a (no held-out point)"
    return f"{_pct(v['median_abs_rel_error'])} (max {_pct(v['max_abs_rel_error'])}), {v['covered']}/{v['n_test']} in PI"


def _pct(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.3g}%"


def _short(text: str, n: int = 60) -> str:
    text = text.replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"


def markdown_lines(validations: dict[str, dict], what: str = "QiD") -> list[str]:
    """A section explaining the held-out figures, one line per method and held-out variable."""
    lines = [
        "## Held-out validation",
        "",
        f"Each law is refitted without its largest N (then without its largest D) and asked to predict those "
        f"{what} points. *Median/max error*: |predicted/observed − 1|. *In PI*: held-out points inside the 95% "
        "prediction interval (bootstrap parameter spread + the fit's residual scatter + the point's own "
        "measurement error); *in mean CI*: inside the narrower interval on the mean law, which leaves out the "
        "scatter of a new measurement. A prediction beyond the largest measured N or D is about as good as "
        "these figures say, at best: errors grow with the distance extrapolated.",
        "",
        "| method | held out | points | median error | max error | in 95% PI | in mean CI | residual sd (log) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, by_hold in validations.items():
        for h in HOLDS:
            v = (by_hold or {}).get(h)
            if not v or v.get("error") or not v.get("n_test"):
                why = (v or {}).get("error") or "no held-out point"
                lines.append(f"| {m} | largest {h} | 0 | n/a ({_short(why)}) | | | | |")
                continue
            n = v["n_test"]
            lines.append(
                f"| {m} | largest {h} = {v['held_out_value']:.3g} | {n} | {_pct(v['median_abs_rel_error'])} | "
                f"{_pct(v['max_abs_rel_error'])} | {v['covered']}/{n} | {v['covered_mean']}/{n} | "
                f"{v['scatter'].get('sd_log', float('nan')):.3g} |"
            )
    return [*lines, ""]


def plot_parity(
    validations: dict[str, dict], target: str = "QiD", holds: tuple[str, ...] = HOLDS, fmt: str = "png"
) -> bytes:
    """Rows: methods; columns: largest N / largest D held out. Observed vs predicted with the 95% PI.

    Returns the figure's bytes in ``fmt`` (png, pdf or svg)."""
    methods = list(validations) or ["(none)"]
    plt, fig, axes = new_figure(len(methods), len(holds), (4.4 * len(holds), 3.9 * len(methods)))
    for row, m in zip(axes, methods, strict=True):
        for ax, h in zip(row, holds, strict=True):
            v = (validations.get(m) or {}).get(h) or {}
            pairs = v.get("pairs") or []
            if not pairs:
                ax.text(0.5, 0.5, _short(v.get("error") or "no held-out point", 80), ha="center", va="center",
                        wrap=True, fontsize=8, transform=ax.transAxes)  # fmt: skip
                ax.set_title(f"{m + ': ' if m else ''}largest {h} held out", fontsize=9)
                ax.axis("off")
                continue
            obs = np.array([p["observed"] for p in pairs])
            pred = np.array([p["predicted"] for p in pairs])
            lo = np.array([p["pi"][0] for p in pairs], dtype=float)
            hi = np.array([p["pi"][1] for p in pairs], dtype=float)
            key = "P" if "P" in pairs[0] else ("G" if "G" in pairs[0] else None)
            groups = sorted({p[key] for p in pairs}) if key else [None]
            for color, g in zip(distinct_colors(len(groups)), groups, strict=True):
                s = np.array([key is None or p[key] == g for p in pairs])
                err = np.array(
                    [pred[s] - np.nan_to_num(lo[s], nan=pred[s]), np.nan_to_num(hi[s], nan=pred[s]) - pred[s]]
                )
                ax.errorbar(obs[s], pred[s], yerr=np.clip(err, 0, None), fmt="o", ms=4, color=color, lw=0.8,
                            capsize=2, label=f"{key} = {g:g}" if key else None)  # fmt: skip
            ends = np.concatenate([obs, pred, lo[np.isfinite(lo)], hi[np.isfinite(hi)]])
            ends = ends[ends > 0]
            a, b = ends.min() / 1.2, ends.max() * 1.2
            ax.plot([a, b], [a, b], "k--", lw=1)
            _log_axes(ax)
            ax.set_xlabel(f"observed {target}")
            ax.set_ylabel(f"predicted {target} (95% PI)")
            ax.set_title(
                f"{m + ': ' if m else ''}largest {h} held out; median err {_pct(v['median_abs_rel_error'])}, "
                f"{v['covered']}/{v['n_test']} in PI",
                fontsize=8,
            )
            if key:
                ax.legend(fontsize=7)
    if fmt == "png":
        return to_png(plt, fig)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format=fmt)
    plt.close(fig)
    return buf.getvalue()
