"""Fit and report a QAT study (Chen et al. 2025, arXiv 2505.14302; SPEC §2).

- The QAT law δ = k·D^γD·(log2 G)^γG / N^γN per scheme (laws engine, Huber in log space, bootstrap 95%
  CIs), on the held-out δ and, as in the paper, on the smoothed final training-loss δ. Per-channel
  scales enter as G = model width. Held-out points with δ <= 2 x paired SE (every δ <= 0 included) are
  excluded and counted (:mod:`qscale.evaluate.noise`); training-loss points with δ <= 0 likewise.
- The decomposition δ_W4A4 ≈ c·(δ_W4A16 + δ_W16A4) (paper: c = 0.906), least squares through 0.
- Per-layer attribution of the activation error (input quantization MSE, kurtosis) and the FC2 fix:
  relative reduction of δ when the ``down_proj`` input is kept at 8 bits (paper: 20.5%-42.9% for W4A4).
- QAT vs PTQ: δ of GPTQ W4 and of QAT fine-tunes per recipe, relative to the checkpoint and to the
  full-precision fine-tune of the same steps (the control).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qscale.evaluate.noise import NoisePolicy, paired_delta
from qscale.provenance import atomic_write_bytes, atomic_write_json, to_jsonable
from qscale.report import qat_plots
from qscale.report.qat_fit import SchemeFit, fit_scheme
from qscale.report.qat_law import PAPER_C, PAPER_FC2, noise_text, paper_params
from qscale.report.qat_markdown import summary_markdown
from qscale.report.validation import HOLDS, plot_parity

CONTROL = "W8A8"


@dataclass
class QatReport:
    folder: Path
    fits: dict[str, SchemeFit]
    c_factor: dict
    attribution: dict
    fc2: dict
    qat_vs_ptq: dict
    control: dict


def c_factor(rows: list[dict], metric: str = "delta") -> dict:
    """c in δ_W4A4 ≈ c·(δ_W4A16 + δ_W16A4) over cells (N, D, G) holding all three (least squares through 0)."""
    by = defaultdict(dict)
    for r in rows:
        by[(r["model"], r["D"], r["G"])][r["scheme"]] = r[metric]
    pairs = [(v["W4A4"], v["W4A16"] + v["W16A4"]) for v in by.values() if {"W4A4", "W4A16", "W16A4"} <= set(v)]
    if not pairs:
        return {"n": 0, "c": None, "median_ratio": None, "paper": PAPER_C}
    a, b = np.array(pairs).T
    ratios = a[b > 0] / b[b > 0]
    return {
        "n": len(pairs),
        "c": float((a @ b) / (b @ b)) if (b @ b) > 0 else None,
        "median_ratio": float(np.median(ratios)) if ratios.size else None,
        "r2": float(1 - np.sum((a - (a @ b) / (b @ b) * b) ** 2) / np.sum((a - a.mean()) ** 2))
        if len(a) > 1 and np.sum((a - a.mean()) ** 2) > 0 and (b @ b) > 0
        else None,
        "paper": PAPER_C,
    }


def layer_type(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def attribution_table(attr: list[dict]) -> dict:
    """Per model (fp / W16A4 / W4A4) and layer type: mean and max input kurtosis, mean relative MSE.

    Relative MSE (error / mean square of the input) is compared across layers, not the absolute MSE: the
    inputs of different layers live on different scales (normed hidden states vs SwiGLU products).
    """
    out = {}
    for scheme in sorted({r["scheme"] for r in attr}):
        rows = [r for r in attr if r["scheme"] == scheme]
        types = defaultdict(list)
        for r in rows:
            types[layer_type(r["layer"])].append(r)
        table = {
            t: {
                "kurtosis": float(np.mean([r["kurtosis"] for r in rs])),
                "max_kurtosis": float(np.max([r["kurtosis"] for r in rs])),
                "rel_mse": float(np.mean([r["rel_mse"] for r in rs])),
                "n_layers": len(rs),
            }
            for t, rs in sorted(types.items())
        }
        rank_k = sorted(table, key=lambda t: -table[t]["kurtosis"])
        rank_m = sorted(table, key=lambda t: -table[t]["rel_mse"])
        out[scheme] = {
            "model": rows[0]["model"],
            "D": rows[0]["D"],
            "G": rows[0]["G"],
            "by_type": table,
            "layers": {r["layer"]: {k: r[k] for k in ("mse", "rel_mse", "kurtosis")} for r in rows},
            "down_proj_rank_kurtosis": rank_k.index("down_proj") + 1 if "down_proj" in table else None,
            "down_proj_rank_rel_mse": rank_m.index("down_proj") + 1 if "down_proj" in table else None,
        }
    return out


def fc2_reduction(rows: list[dict], policy: NoisePolicy = NoisePolicy()) -> dict:
    """Relative reduction (δ − δ_fc2a8)/δ per base scheme and G, over cells whose base δ is above the floor."""
    idx = {(r["model"], r["D"], r["scheme"], r["G"]): r for r in rows}
    out = {}
    for base in ("W4A4", "W16A4"):
        per_g, skipped = defaultdict(list), 0
        for (m, d, s, g), r in idx.items():
            if s != f"{base}-fc2a8" or (m, d, base, g) not in idx:
                continue
            b = idx[(m, d, base, g)]
            if not policy.keep(np.array([b["delta"]]), np.array([b["delta_se"]]))[0]:
                skipped += 1
                continue
            per_g[g].append(
                {
                    "model": m,
                    "D": d,
                    "delta": b["delta"],
                    "delta_fc2a8": r["delta"],
                    "reduction": (b["delta"] - r["delta"]) / b["delta"],
                }
            )
        if per_g or skipped:
            out[base] = {
                "by_G": {
                    str(g): {"mean_reduction": float(np.mean([c["reduction"] for c in cs])), "cells": cs}
                    for g, cs in sorted(per_g.items())
                },
                "mean_reduction": float(np.mean([c["reduction"] for cs in per_g.values() for c in cs]))
                if per_g
                else None,
                "n_below_floor": skipped,
            }
    out["paper"] = PAPER_FC2
    return out


def control_summary(rows: list[dict]) -> dict:
    """The W8A8 control: its |δ| per (N, D) measures the run-to-run noise of training (trajectories diverge
    under any perturbation), which the paired SE over held-out windows does not see. Counts, per scheme,
    the points whose δ is within 2 x that |δ| (reported, not excluded)."""
    ctrl = {(r["model"], r["D"]): r["delta"] for r in rows if r["scheme"] == CONTROL}
    if not ctrl:
        return {}
    within = defaultdict(lambda: [0, 0])
    for r in rows:
        if r["scheme"] != CONTROL and (r["model"], r["D"]) in ctrl:
            within[r["scheme"]][1] += 1
            within[r["scheme"]][0] += int(r["delta"] <= 2 * abs(ctrl[(r["model"], r["D"])]))
    return {
        "per_cell": [{"model": m, "D": d, "delta": v} for (m, d), v in ctrl.items()],
        "median_abs_delta": float(np.median(np.abs(list(ctrl.values())))),
        "within_2x_control": {s: {"n": w[0], "of": w[1]} for s, w in within.items()},
    }


def qat_vs_ptq(ptq: list[dict]) -> dict:
    """Per size: δ vs the checkpoint and vs the fp fine-tune control (paired over the same windows)."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in ptq):
        rows = {(r["method"], r["scheme"]): r for r in ptq if r["model"] == model}
        ck, ctrl = rows.get(("checkpoint", "W16A16")), rows.get(("fp-finetune", "W16A16"))
        if ck is None:
            continue
        table = {}
        for (method, scheme), r in rows.items():
            if method == "checkpoint":
                continue
            e = {"loss": r["loss"], "train_loss": r["train_loss"], "steps": r["steps"], "seconds": r["seconds"]}
            e["delta_ckpt"], e["se_ckpt"] = paired_delta(ck["per_window"], r["per_window"])
            if ctrl is not None:
                e["delta_ctrl"], e["se_ctrl"] = paired_delta(ctrl["per_window"], r["per_window"])
            table[f"{method} {scheme}"] = e
        verdict = {}
        g = table.get("gptq W4A16")
        for rec in ("lsq", "quest", "ste"):
            q = table.get(f"{rec} W4A16")
            if g is not None and q is not None:
                verdict[rec] = {
                    "beats_gptq_vs_checkpoint": q["delta_ckpt"] < g["delta_ckpt"],
                    "beats_gptq_vs_control": q.get("delta_ctrl", math.inf) < g["delta_ckpt"],
                }
        out[model] = {
            "N": ck["N"],
            "D": ck["D"],
            "G": ck["G"],
            "loss_checkpoint": ck["loss"],
            "rows": table,
            "w4a16_vs_gptq": verdict,
        }
    return out


def fitted_ranges(cells: list[dict]) -> dict[str, list[float]]:
    """The range of N, D and (effective) G the cells span: what ``qscale predict`` calls extrapolation."""
    if not cells:
        return {}
    return {
        k: [float(min(r[c] for r in cells)), float(max(r[c] for r in cells))]
        for k, c in (("N", "N"), ("D", "D"), ("G", "G_eff"))
    }


def write_qat_report(
    cells: list[dict],
    fps: list[dict],
    attr: list[dict],
    ptq: list[dict],
    folder: str | Path,
    n_boot: int = 200,
    seed: int = 0,
    title: str = "QAT study",
    context: dict | None = None,
    policy: NoisePolicy = NoisePolicy(),
) -> QatReport:
    """Fit, tabulate and write ``fit.json``, ``summary.md`` and the PNG plots into ``folder``."""
    folder = Path(folder)
    schemes = list(dict.fromkeys(r["scheme"] for r in cells if r["scheme"] != CONTROL))
    by_scheme = {s: [r for r in cells if r["scheme"] == s] for s in schemes}
    fits = {
        f"{s} {m}": fit_scheme(by_scheme[s], s, m, n_boot, seed, policy)
        for s in schemes
        for m in ("delta", "delta_train")
    }
    report = QatReport(
        folder,
        fits,
        {"held_out": c_factor(cells, "delta"), "train": c_factor(cells, "delta_train")},
        attribution_table(attr),
        fc2_reduction(cells, policy),
        qat_vs_ptq(ptq),
        control_summary(cells),
    )
    payload = {
        "law": "delta = k * D^gamma_D * (log2 G)^gamma_G / N^gamma_N (Chen et al. 2025, arXiv 2505.14302)",
        "law_name": "qat",
        "ranges": fitted_ranges(cells),
        "noise_policy": noise_text(policy),
        "n_boot": n_boot,
        "fits": {
            k: {
                "scheme": f.scheme,
                "metric": f.metric,
                "params": f.params,
                "ci": f.ci,
                "stats": f.stats,
                "n_rows": f.n_rows,
                "n_excluded": f.n_excluded,
                "n_nonpositive": f.n_nonpositive,
                "error": f.error,
                "paper": paper_params(f.scheme),
                "law_name": f.law_name,
                "bootstrap": f.bootstrap,
                "scatter": f.scatter,
                "validation": f.validation,
            }
            for k, f in fits.items()
        },
        "c_factor": report.c_factor,
        "attribution": report.attribution,
        "fc2_int8": report.fc2,
        "qat_vs_ptq": report.qat_vs_ptq,
        "training_noise_control": report.control,
        "context": context or {},
        "cells": [{k: v for k, v in r.items() if k not in ("per_window", "versions")} for r in cells],
        "fp_runs": [{k: v for k, v in r.items() if k != "per_window"} for r in fps],
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "fit.json", to_jsonable(payload))
    for s in schemes:
        atomic_write_bytes(
            folder / f"delta_vs_D_{s}.png", qat_plots.delta_vs_d(by_scheme[s], fits[f"{s} delta"], policy)
        )
    if cells:
        atomic_write_bytes(
            folder / "observed_vs_predicted.png",
            qat_plots.observed_vs_predicted(by_scheme, {s: fits[f"{s} delta"] for s in schemes}, policy),
        )
    if report.attribution:
        atomic_write_bytes(folder / "attribution.png", qat_plots.attribution_bars(report.attribution))
    held = {s: f.validation or {h: {"error": f.error or "no validation"} for h in HOLDS} for s, f in fits.items()}
    atomic_write_bytes(folder / "heldout_parity.png", plot_parity(held, "δ"))
    atomic_write_bytes(folder / "summary.md", summary_markdown(title, report, context or {}, policy).encode())
    return report
