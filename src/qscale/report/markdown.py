"""The Markdown summary of a QiD study: it answers the paper's questions (Ouyang et al. 2024, SPEC §1)
for the user's own suite -- the exponents with intervals, whether QiD grows with D and falls with N and
P here, and the training tokens at which each model size reaches a given QiD at 2, 3 and 4 bits.
"""

from __future__ import annotations

import math

from qscale.laws import get_published
from qscale.report.ranking import ranking_markdown
from qscale.report.validation import cell as validation_cell
from qscale.report.validation import markdown_lines as validation_lines

# Direction each exponent's sign implies in QiD = k·D^β/(N^α·P^γ): (variable, positive meaning).
_DIRECTIONS = {"beta": ("D", "grows with D"), "alpha": ("N", "falls with N"), "gamma": ("P", "falls with P")}


def _num(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _tokens(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _verdict(name: str, fit) -> str:
    _, meaning = _DIRECTIONS[name]
    v = fit.params[name]
    lo, hi = fit.ci.get(name, (float("nan"), float("nan"))) if fit.ci else (float("nan"), float("nan"))
    if math.isfinite(lo) and math.isfinite(hi):
        if lo > 0:
            return f"yes: QiD {meaning} ({name} = {_num(v)}, 95% CI above 0)"
        if hi < 0:
            return f"no, the opposite: the 95% CI of {name} lies below 0 ({_num(v)})"
        return f"not resolved: the 95% CI of {name} includes 0 ({_num(v)})"
    return f"{'yes' if v > 0 else 'no'} by the point estimate {name} = {_num(v)} (no interval)"


def summary_markdown(title, fits, inversions, trend, sizes, d_range, cfg, context, ranking=None) -> str:
    """The whole ``summary.md`` text."""
    lines = [f"# {title}", ""]
    if context:
        lines += [", ".join(f"{k}: {v}" for k, v in context.items()), ""]
    lines += [
        "Law (Ouyang et al. 2024, arXiv 2411.17691): **QiD = k · D^β / (N^α · P^γ)**, QiD = loss_quantized − "
        "loss_full_precision in nats/token, N = non-embedding parameters, D = training tokens, P = bits; fitted "
        "per method in log space (Huber, laws engine), 95% bootstrap intervals.",
        f"Model sizes: {', '.join(f'{m} (N={n:,})' for m, n in sizes.items())}; "
        f"checkpoints from D = {_tokens(d_range[0])} to {_tokens(d_range[1])} tokens.",
        "",
        f"Noise policy: {cfg.noise.describe()}.",
        "",
        "## Fitted exponents",
        "",
        "| method | k | α (N) | β (D) | γ (P) | points fitted | excluded (≤ floor) | of which ≤ 0 | R² (log) |"
        " held out: largest N | held out: largest D |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, f in fits.items():
        if f.params is None:
            lines.append(f"| {m} | {f.error} | | | | 0 | {f.excluded['total']} | {f.excluded['nonpositive']} | | | |")
            continue
        cells = []
        for p in ("k", "alpha", "beta", "gamma"):
            lo, hi = (f.ci or {}).get(p, (float("nan"), float("nan")))
            cells.append(f"{_num(f.params[p])} [{_num(lo)}, {_num(hi)}]")
        ex = [validation_cell((f.validation or {}).get(h)) for h in ("N", "D")]
        lines.append(
            f"| {m} | {' | '.join(cells)} | {f.stats['n_points']} | {f.excluded['total']} | "
            f"{f.excluded['nonpositive']} | {_num(f.stats['r2_log'])} | {ex[0]} | {ex[1]} |"
        )
    paper = get_published("ouyang2024-gptq").params
    lines += [
        "",
        f"Paper (GPTQ, Pythia 160M–12B; published set ouyang2024-gptq): k = {paper['k']:g}, "
        f"α = {paper['alpha']:g}, β = {paper['beta']:g}, γ = {paper['gamma']:g}.",
        "",
        "Held out: the law refitted without the largest N (or D) predicts those points; median |relative error| "
        "(max) and how many fall inside the 95% prediction interval (details below).",
        "",
    ]
    lines += validation_lines({m: f.validation or {} for m, f in fits.items() if f.params is not None})
    lines += ranking_markdown(ranking)
    lines += ["## Noise", ""]
    for m, f in fits.items():
        n = f.noise
        ratio = n.floor_ratio
        eight = "" if n.max_abs_qid_8bit is None else f"; largest |QiD| at 8 bits {_num(n.max_abs_qid_8bit)}"
        lines.append(
            f"- {m}: median paired SE {_num(n.median_se)} nats, median floor {_num(n.median_floor)} vs "
            f"median fitted QiD {_num(n.median_qid_kept)} (ratio {_num(ratio)}){eight}; excluded by "
            f"bit width: {', '.join(f'{p} bits: {c}' for p, c in f.excluded['by_bits'].items())}."
        )
    lines += ["", "## Does the paper's finding hold on this suite?", ""]
    for m, f in fits.items():
        t = trend[m]
        lines.append(f"**{m}**")
        lines.append("")
        for name in ("beta", "alpha", "gamma"):
            var, meaning = _DIRECTIONS[name]
            q = f"- QiD {meaning}? "
            q += _verdict(name, f) if f.params is not None else "not fitted"
            lines.append(q + ". " + _raw_trend(var, t[var]))
        lines.append("")
    lines += [
        "## Training tokens to reach a given QiD (fitted law inverted)",
        "",
        "D* = (QiD · N^α · P^γ / k)^(1/β); values outside the measured range of D are extrapolations (*).",
        "",
    ]
    for m, rows in inversions.items():
        if not rows:
            lines += [f"**{m}**: no fitted law.", ""]
            continue
        note = (
            ""
            if fits[m].params["beta"] > 0
            else (
                f" β = {_num(fits[m].params['beta'])} ≤ 0: QiD does not grow with D on this suite, so no number of "
                "training tokens makes it reach a threshold from below (n/a)."
            )
        )
        lines += [
            f"**{m}**{note}",
            "",
            "| model | N | bits | " + " | ".join(f"QiD {q:g}" for q in cfg.thresholds) + " |",
            "|---|---|---|" + "---|" * len(cfg.thresholds),
        ]
        for model, n in sizes.items():
            for p in cfg.inversion_bits:
                vals = [r["tokens"] for r in rows if r["model"] == model and r["P"] == p]
                cells = [
                    _tokens(v) + ("*" if math.isfinite(v) and not d_range[0] <= v <= d_range[1] else "") for v in vals
                ]
                lines.append(f"| {model} | {n:,} | {p} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Files",
        "",
        "- `fit.json`: parameters, intervals, fit statistics, residual scatter, held-out validation (with the "
        "held-out pairs), exclusions, noise, inversion table, trend counts, full-precision losses.",
        "- `qid_vs_D_<method>.png`: QiD vs D per model size at each bit width, with the fitted law "
        "(hollow: excluded by the noise policy).",
        "- `observed_vs_predicted.png`: observed vs predicted QiD per method.",
        "- `heldout_parity.png`: held-out points, observed vs predicted by the law fitted without them, with "
        "the 95% prediction interval (rows: methods; columns: largest N, largest D held out).",
        "",
    ]
    return "\n".join(lines)


def _raw_trend(var: str, t: dict) -> str:
    if var == "D":
        return (
            f"Raw points: QiD rises with D in {t['grows']} of {t['grows'] + t['falls'] + t['flat']} "
            f"(size, bits) series (rank correlation > 0), falls in {t['falls']}"
        )
    if var == "N":
        n = t["falls"] + t["grows"]
        return (
            f"Raw points: at equal D and bits, the largest model's QiD is below the smallest's in {t['falls']} "
            f"of {n} comparisons"
            if n
            else "Raw points: no checkpoint D shared by two sizes to compare"
        )
    return (
        f"Raw points: QiD falls from one bit width to the next higher one in {t['falls']} of "
        f"{t['falls'] + t['grows']} comparisons"
    )
