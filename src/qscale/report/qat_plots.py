"""PNG plots of a QAT study: δ vs D per model size (one panel per G, fitted QAT law), observed vs predicted
δ per scheme, and the per-layer input kurtosis / quantization error bars (Chen et al. 2025; SPEC §2).

Rendered with matplotlib's Agg backend to bytes so that files are written atomically. Points kept by the
noise policy are filled, excluded points with δ > 0 hollow; δ <= 0 cannot sit on a log axis and is counted
in each panel's title.
"""

from __future__ import annotations

import numpy as np

from qscale.evaluate.noise import NoisePolicy
from qscale.laws.plot_style import distinct_colors, readable_log_axes
from qscale.report.plots import new_figure, to_png
from qscale.report.qat_law import predict_delta


def _loglog(ax, any_positive: bool = True) -> None:
    """Log-log axes; a panel with nothing positive to show gets a note instead of a log y axis."""
    ax.set_xscale("log")
    if any_positive:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no δ > 0", ha="center", va="center", transform=ax.transAxes)
    readable_log_axes(ax)
    ax.grid(True, which="both", alpha=0.3)


def delta_vs_d(rows: list[dict], fit, policy: NoisePolicy) -> bytes:
    """One panel per group size: δ against D, one colour per model size, with the fitted law."""
    groups = sorted({int(r["G"]) for r in rows}, key=lambda g: (g == 0, g))
    models = sorted({(int(r["N"]), r["model"]) for r in rows})
    plt, fig, axes = new_figure(1, len(groups), (4.0 * len(groups), 3.6))
    colors = distinct_colors(len(models))
    scheme = rows[0]["scheme"] if rows else ""
    for ax, g in zip(axes[0], groups, strict=True):
        n_nonpos, n_pos = 0, 0
        for color, (n, name) in zip(colors, models, strict=True):
            pts = sorted((r for r in rows if int(r["G"]) == g and r["model"] == name), key=lambda r: r["D"])
            if not pts:
                continue
            d = np.array([r["D"] for r in pts], dtype=float)
            y = np.array([r["delta"] for r in pts], dtype=float)
            keep = policy.keep(y, np.array([r["delta_se"] for r in pts], dtype=float))
            pos = y > 0
            n_nonpos += int((~pos).sum())
            n_pos += int(pos.sum())
            ax.scatter(d[keep], y[keep], color=color, s=18, label=f"{name} (N={n:.2g})")
            ax.scatter(d[pos & ~keep], y[pos & ~keep], facecolors="none", edgecolors=color, s=18)
            if fit.params is not None:
                grid = np.geomspace(d.min(), d.max(), 40)
                ax.plot(grid, predict_delta(fit.params, n, grid, pts[0]["G_eff"]), color=color, lw=1)
                n_pos += 1
        ds = [r["D"] for r in rows]
        ax.set_xlim(min(ds) / 1.2, max(ds) * 1.2)
        _loglog(ax, n_pos > 0)
        ax.set_xlabel("training tokens D")
        ax.set_ylabel("δ = loss_QAT − loss_fp (nats)")
        ax.set_title(
            f"{scheme}, G = {g or 'per channel'}" + (f" ({n_nonpos} pts <= 0)" if n_nonpos else ""), fontsize=9
        )
    axes[0][0].legend(fontsize=7)
    return to_png(plt, fig)


def observed_vs_predicted(by_scheme: dict[str, list[dict]], fits: dict, policy: NoisePolicy) -> bytes:
    """One panel per scheme: observed δ against the fitted law's prediction, with y = x."""
    schemes = list(by_scheme)
    plt, fig, axes = new_figure(1, len(schemes), (3.8 * len(schemes), 3.8))
    for ax, s in zip(axes[0], schemes, strict=True):
        rows, fit = by_scheme[s], fits[s]
        ax.set_title(s + ("" if fit.params is not None else " (not fitted)"), fontsize=9)
        if fit.params is None:
            ax.text(0.5, 0.5, fit.error, ha="center", va="center", wrap=True, fontsize=7, transform=ax.transAxes)
            ax.axis("off")
            continue
        y = np.array([r["delta"] for r in rows], dtype=float)
        keep = policy.keep(y, np.array([r["delta_se"] for r in rows], dtype=float))
        pred = predict_delta(fit.params, *(np.array([r[c] for r in rows], dtype=float) for c in ("N", "D", "G_eff")))
        pos = y > 0
        ax.scatter(pred[keep], y[keep], s=16, color=distinct_colors(1)[0], label="fitted")
        ax.scatter(pred[pos & ~keep], y[pos & ~keep], s=16, facecolors="none", edgecolors="gray", label="excluded")
        lo = min(pred.min(), y[pos].min(initial=pred.min()))
        hi = max(pred.max(), y.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        _loglog(ax)
        ax.set_xlabel("predicted δ")
        ax.set_ylabel("observed δ")
        ax.legend(fontsize=7)
    return to_png(plt, fig)


def attribution_bars(attribution: dict) -> bytes:
    """Per layer type: input kurtosis and relative quantization MSE of each attributed model."""
    models = list(attribution)
    types = sorted({t for a in attribution.values() for t in a["by_type"]})
    plt, fig, axes = new_figure(1, 2, (10, 3.8))
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(types))
    for i, (m, color) in enumerate(zip(models, distinct_colors(len(models)), strict=True)):
        bt = attribution[m]["by_type"]
        for ax, key in zip(axes[0], ("kurtosis", "rel_mse"), strict=True):
            ax.bar(x + i * width, [bt[t][key] if t in bt else np.nan for t in types], width, label=m, color=color)
    axes[0][0].set_yscale("log")  # kurtosis spans 3 (Gaussian) to ~100 (FC2 outliers)
    for ax, label in zip(
        axes[0],
        ("input kurtosis (mean over layers; 3 = Gaussian)", "relative input quantization MSE (A4)"),
        strict=True,
    ):
        ax.set_xticks(x + width * (len(models) - 1) / 2, types, rotation=30, fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return to_png(plt, fig)
