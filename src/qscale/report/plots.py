"""PNG plots of a QiD study: QiD vs D per model size at each bit width (with the fitted law), and
observed vs predicted. Rendered with matplotlib's Agg backend to bytes, so files are written atomically.

Points kept by the noise policy are filled; excluded points with QiD > 0 are hollow; QiD <= 0 cannot
sit on a log axis and is counted in each panel's title instead.
"""

from __future__ import annotations

import io

import numpy as np

from qscale.evaluate.noise import NoisePolicy
from qscale.laws import predict
from qscale.laws.plot_style import distinct_colors, readable_log_axes


def new_figure(nrows: int, ncols: int, size: tuple[float, float]):
    """A grid of axes on the Agg backend (no display needed): ``plt, fig, axes[row][col]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    return plt, fig, axes


def _log_axes(ax) -> None:
    """Log-log axes with several plainly labelled ticks even on a short range (16K–102K tokens)."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    readable_log_axes(ax)
    ax.grid(True, which="both", alpha=0.3)


def to_png(plt, fig) -> bytes:
    """The figure as PNG bytes (closed afterwards), for an atomic write."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plot_qid_vs_d(rows: list[dict], fit, policy: NoisePolicy, method: str) -> bytes:
    """One panel per bit width: QiD against training tokens D, one colour per model size, fitted curves."""
    bits = sorted({int(r["P"]) for r in rows})
    models = sorted({(int(r["N"]), r["model"]) for r in rows})
    plt, fig, axes = new_figure(1, len(bits), (4.2 * len(bits), 3.8))
    colors = distinct_colors(len(models))
    for ax, p in zip(axes[0], bits, strict=True):
        n_nonpos = n_pos = 0
        for color, (n, name) in zip(colors, models, strict=True):
            pts = sorted((r for r in rows if int(r["P"]) == p and r["model"] == name), key=lambda r: r["D"])
            if not pts:
                continue
            d = np.array([r["D"] for r in pts], dtype=float)
            q = np.array([r["qid"] for r in pts], dtype=float)
            keep = policy.keep(q, np.array([r["qid_se"] for r in pts], dtype=float))
            pos = q > 0
            n_nonpos += int((~pos).sum())
            n_pos += int(pos.sum())
            ax.scatter(d[keep], q[keep], color=color, s=18, label=f"{name} (N={n:.2g})")
            ax.scatter(d[pos & ~keep], q[pos & ~keep], facecolors="none", edgecolors=color, s=18)
            if fit.params is not None:
                grid = np.geomspace(d.min(), d.max(), 50)
                ax.plot(grid, predict("qid", fit.params, {"N": n, "D": grid, "P": p}), color=color, lw=1)
        if n_pos or fit.params is not None:
            _log_axes(ax)
        else:  # nothing can sit on a log QiD axis: say so instead of drawing an empty one
            d_all = [float(r["D"]) for r in rows if int(r["P"]) == p]
            ax.set_xscale("log")
            ax.set_xlim(min(d_all) / 1.2, max(d_all) * 1.2)
            ax.text(0.5, 0.5, "every QiD <= 0", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("training tokens D")
        ax.set_ylabel("QiD (nats)")
        ax.set_title(f"{method}, {p} bits" + (f" ({n_nonpos} pts <= 0 not shown)" if n_nonpos else ""), fontsize=9)
    axes[0][0].legend(fontsize=7)
    return to_png(plt, fig)


def plot_observed_vs_predicted(by_method: dict[str, list[dict]], fits: dict, policy: NoisePolicy) -> bytes:
    """One panel per method: observed QiD against the fitted law's prediction, with the y = x line."""
    methods = list(by_method)
    plt, fig, axes = new_figure(1, len(methods), (4.2 * len(methods), 4.0))
    for ax, m in zip(axes[0], methods, strict=True):
        rows, fit = by_method[m], fits[m]
        ax.set_title(f"{m}" + ("" if fit.params is not None else " (not fitted)"), fontsize=9)
        if fit.params is None:
            ax.text(0.5, 0.5, fit.error, ha="center", va="center", wrap=True, fontsize=8, transform=ax.transAxes)
            ax.axis("off")
            continue
        q = np.array([r["qid"] for r in rows], dtype=float)
        se = np.array([r["qid_se"] for r in rows], dtype=float)
        pred = predict("qid", fit.params, {c: np.array([r[c] for r in rows], dtype=float) for c in ("N", "D", "P")})
        keep, pos = policy.keep(q, se), q > 0
        bits = np.array([r["P"] for r in rows])
        levels = sorted(set(bits.tolist()))
        for color, p in zip(distinct_colors(len(levels)), levels, strict=True):
            s = bits == p
            pts = ax.scatter(pred[s & keep], q[s & keep], s=16, color=color, label=f"{p} bits")
            ax.scatter(
                pred[s & pos & ~keep], q[s & pos & ~keep], s=16, facecolors="none", edgecolors=pts.get_facecolor()
            )
        lo, hi = min(pred.min(), q[pos].min(initial=pred.min())), max(pred.max(), q.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        _log_axes(ax)
        ax.set_xlabel("predicted QiD")
        ax.set_ylabel("observed QiD")
        ax.legend(fontsize=7)
    return to_png(plt, fig)
