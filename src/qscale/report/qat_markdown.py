"""The Markdown summary of a QAT study: fitted QAT-law exponents next to the paper's, the W4A4
decomposition factor c, the per-layer attribution, the FC2-at-8-bits fix and the QAT-vs-PTQ table
(Chen et al. 2025, arXiv 2505.14302; SPEC §2)."""

from __future__ import annotations

import math

from qscale.report.qat_law import PARAMS, noise_text, paper_params
from qscale.report.validation import cell as validation_cell
from qscale.report.validation import markdown_lines as validation_lines


def _num(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _fits(report) -> list[str]:
    lines = [
        "| scheme | metric | k | γN | γD | γG | points | excluded | R² (log) | held out: largest N |"
        " held out: largest D | paper (k, γN, γD, γG) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in report.fits.values():
        pp = paper_params(f.scheme)
        paper = ", ".join(_num(pp[p]) for p in PARAMS) if pp else "n/a"
        metric = "held-out δ" if f.metric == "delta" else "train-loss δ"
        if f.params is None:
            lines.append(f"| {f.scheme} | {metric} | {f.error} | | | | 0 | {f.n_excluded} | | | | {paper} |")
            continue
        held = [validation_cell((f.validation or {}).get(h)) if f.metric == "delta" else "" for h in ("N", "D")]
        cells = []
        for p in PARAMS:
            lo, hi = (f.ci or {}).get(p, (float("nan"), float("nan")))
            cells.append(f"{_num(f.params[p])} [{_num(lo)}, {_num(hi)}]")
        lines.append(
            f"| {f.scheme} | {metric} | {' | '.join(cells)} | {f.stats['n_points']} | {f.n_excluded} "
            f"(≤0: {f.n_nonpositive}) | {_num(f.stats['r2_log'])} | {held[0]} | {held[1]} | {paper} |"
        )
    return lines


def _attribution(report) -> list[str]:
    if not report.attribution:
        return ["No attribution measured."]
    first = next(iter(report.attribution.values()))
    lines = [
        f"Model {first['model']} at D = {first['D']:,}, inputs quantized to 4 bits (G = {first['G'] or 'per token'}); "
        "mean over layers of each type.",
        "",
        "| model | layer type | kurtosis (mean / max) | relative MSE |",
        "|---|---|---|---|",
    ]
    for m, a in report.attribution.items():
        for t, v in a["by_type"].items():
            lines.append(f"| {m} | {t} | {_num(v['kurtosis'])} / {_num(v['max_kurtosis'])} | {_num(v['rel_mse'])} |")
    lines.append("")
    for m, a in report.attribution.items():
        n = len(a["by_type"])
        first = a["down_proj_rank_kurtosis"] == 1 and a["down_proj_rank_rel_mse"] == 1
        lines.append(
            f"- {m}: `down_proj` input ranks {a['down_proj_rank_kurtosis']}/{n} by kurtosis and "
            f"{a['down_proj_rank_rel_mse']}/{n} by relative quantization MSE "
            f"({'dominates' if first else 'does not dominate on both counts'})."
        )
    return lines


def _fc2(report) -> list[str]:
    lines = []
    for base in ("W4A4", "W16A4"):
        r = report.fc2.get(base)
        if r is None:
            continue
        per_g = ", ".join(f"G = {g if g != '0' else 'ch'}: {_pct(v['mean_reduction'])}" for g, v in r["by_G"].items())
        lines.append(
            f"- {base}: mean δ reduction {_pct(r['mean_reduction'])} ({per_g}); "
            f"{r['n_below_floor']} cells skipped (base δ under the noise floor)."
        )
    lines.append(f"- Paper: {report.fc2['paper']}.")
    return lines


def _control(report) -> list[str]:
    c = report.control
    if not c:
        return ["No W8A8 control runs."]
    cells = ", ".join(f"{r['model']} D={r['D']:,}: {r['delta']:+.4f}" for r in c["per_cell"])
    within = "; ".join(f"{s}: {v['n']}/{v['of']}" for s, v in c["within_2x_control"].items())
    return [
        f"W8A8 (practically lossless) trained like every cell: δ = {cells}; median |δ| = "
        f"{_num(c['median_abs_delta'])}. This is the run-to-run noise of training, which the paired SE over "
        "held-out windows does not include.",
        "",
        f"Points with δ ≤ 2 x |δ_W8A8| of their (N, D) (indistinguishable from training noise; kept in the "
        f"fit, counted here): {within}.",
    ]


def _ptq(report) -> list[str]:
    if not report.qat_vs_ptq:
        return ["Not run."]
    lines = [
        "δ_ckpt = loss − loss of the checkpoint; δ_ctrl = loss − loss of the full-precision fine-tune of the "
        "same steps (the honest QAT cost: more training alone lowers the loss). ± paired SE.",
        "",
    ]
    for model, t in report.qat_vs_ptq.items():
        lines += [
            f"**{model}** (N = {t['N']:,}, D = {t['D']:,}, G = {t['G'] or 'per channel'}, checkpoint loss "
            f"{t['loss_checkpoint']:.4f})",
            "",
            "| method | scheme | δ_ckpt | δ_ctrl |",
            "|---|---|---|---|",
        ]
        for name, e in t["rows"].items():
            method, scheme = name.split(" ")
            ctrl = f"{e['delta_ctrl']:+.4f} ± {e['se_ctrl']:.4f}" if "delta_ctrl" in e else "n/a"
            lines.append(f"| {method} | {scheme} | {e['delta_ckpt']:+.4f} ± {e['se_ckpt']:.4f} | {ctrl} |")
        for rec, v in t["w4a16_vs_gptq"].items():
            lines.append(
                f"- {rec} W4A16 below GPTQ W4: vs checkpoint {'yes' if v['beats_gptq_vs_checkpoint'] else 'no'}, "
                f"vs control {'yes' if v['beats_gptq_vs_control'] else 'no'}"
            )
        lines.append("")
    return lines


def summary_markdown(title: str, report, context: dict, policy) -> str:
    """The whole ``summary.md`` text."""
    c, ct = report.c_factor["held_out"], report.c_factor["train"]
    lines = [f"# {title}", ""]
    if context:
        lines += [", ".join(f"{k}: {v}" for k, v in context.items()), ""]
    lines += [
        "Law (Chen et al. 2025, arXiv 2505.14302): **δ = k · D^γD · (log2 G)^γG / N^γN**, δ = loss_QAT − "
        "loss_full-precision at the same N and D (both trained from scratch, same seed and data order). "
        "Held-out δ on fixed validation windows; train-loss δ = difference of the smoothed final training losses "
        "(the paper's metric). Per-channel scales enter as G = model width. 95% bootstrap intervals.",
        "",
        f"Noise policy: {noise_text(policy)}.",
        "",
        "## Fitted QAT law",
        "",
        *_fits(report),
        "",
        *validation_lines({f.scheme: f.validation for f in report.fits.values() if f.validation}, "δ"),
        "## Training-noise control",
        "",
        *_control(report),
        "",
        "## δ_W4A4 ≈ c · (δ_W4A16 + δ_W16A4)",
        "",
        f"- held-out δ: c = {_num(c['c'])} (median ratio {_num(c['median_ratio'])}, R² {_num(c.get('r2'))}, "
        f"{c['n']} cells); train-loss δ: c = {_num(ct['c'])} (median ratio {_num(ct['median_ratio'])}, "
        f"{ct['n']} cells). "
        f"Paper: c = {c['paper']}.",
        "",
        "## Per-layer attribution of the activation error",
        "",
        *_attribution(report),
        "",
        "## FC2 (down_proj) input at 8 bits",
        "",
        *_fc2(report),
        "",
        "## QAT vs PTQ on the QiD suite's final checkpoints",
        "",
        *_ptq(report),
        "",
        "## Files",
        "",
        "- `fit.json`: everything above plus every cell.",
        "- `delta_vs_D_<scheme>.png`, `observed_vs_predicted.png`, `attribution.png`.",
        "",
    ]
    return "\n".join(lines)
