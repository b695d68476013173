"""Fit and report a QiD study: the unified law per method, its inversion, trends, plots, JSON and Markdown.

The law is Ouyang et al. 2024 (arXiv 2411.17691, SPEC §1), QiD = k · D^β / (N^α · P^γ), fitted per
PTQ method in log space by the laws engine (Huber loss, SPEC §5) on the points above the noise floor
(:mod:`qscale.evaluate.noise`). Inverting it gives the training tokens at which a model of N parameters
reaches a given QiD at P bits: D* = (QiD · N^α · P^γ / k)^(1/β).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from qscale.errors import QscaleError
from qscale.evaluate.noise import NoisePolicy, NoiseSummary, summarize_noise
from qscale.laws import bootstrap_problem, fit_problem, invert, make_problem, predict
from qscale.laws.intervals import fit_scatter
from qscale.laws.uncertainty import MIN_SAMPLES, samples_record
from qscale.laws.validate import validate_all
from qscale.provenance import atomic_write_bytes, atomic_write_json, to_jsonable
from qscale.report.markdown import summary_markdown
from qscale.report.plots import plot_observed_vs_predicted, plot_qid_vs_d
from qscale.report.ranking import rank_at_target
from qscale.report.validation import plot_parity

LAW_NAME = "qid"
LAW_TEXT = "QiD = k * D^beta / (N^alpha * P^gamma)"
# Tiny models lose ~0.1-0.5 nats at 2 bits, ~0.01-0.05 at 3 and ~0.001-0.01 at 4: one level per regime.
DEFAULT_THRESHOLDS = (0.01, 0.05, 0.2)
MIN_FIT_POINTS = 6


@dataclass(frozen=True)
class ReportConfig:
    """What the report computes: inversion thresholds and bit widths, noise policy, bootstrap size."""

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    inversion_bits: tuple[int, ...] = (2, 3, 4)
    noise: NoisePolicy = field(default_factory=NoisePolicy)
    n_boot: int = 200
    seed: int = 0
    target: tuple[float, float, float] | None = None  # (N, D, P) at which to rank the methods

    def __post_init__(self) -> None:
        if not self.thresholds or any(not (t > 0) for t in self.thresholds):
            raise QscaleError(f"QiD thresholds must be positive numbers, got {self.thresholds}")
        if self.n_boot < 0:
            raise QscaleError(f"bootstrap size must be >= 0, got {self.n_boot}")


@dataclass
class MethodFit:
    """The unified law fitted to one method's points, or the reason it could not be."""

    method: str
    n_rows: int
    excluded: dict
    noise: NoiseSummary
    params: dict[str, float] | None = None
    ci: dict[str, tuple[float, float]] | None = None
    stats: dict | None = None
    validation: dict | None = None  # {"N": ..., "D": ...}: held-out checks (qscale.laws.validate)
    error: str | None = None
    bootstrap: dict | None = None  # bootstrap parameter samples (qscale.laws.uncertainty.samples_record)
    scatter: dict | None = None  # residual scatter for prediction intervals (qscale.laws.intervals)


def predict_qid(params: dict[str, float], N, D, P) -> np.ndarray:
    """The unified law QiD = k·D^β/(N^α·P^γ) (SPEC §1), evaluated by the laws engine."""
    return predict(LAW_NAME, params, {"N": N, "D": D, "P": P})


def tokens_for_qid(params: dict[str, float], qid: float, N: float, P: float) -> float:
    """Training tokens D* at which the fitted law reaches ``qid`` for N parameters at P bits.

    D* = (qid·N^α·P^γ/k)^(1/β), solved by the laws engine. NaN when β <= 0: QiD then does not grow
    with D, so no amount of training makes it reach the threshold from below.
    """
    if not (params["beta"] > 0 and qid > 0):
        return float("nan")
    return float(invert(LAW_NAME, params, {"N": N, "P": P}, qid, solve_for="D"))


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    cols = {c: np.array([r[c] for r in rows], dtype=np.float64) for c in ("N", "D", "P", "G", "qid", "qid_se")}
    cols["model"] = np.array([r["model"] for r in rows], dtype=object)
    return cols


def _fit_law(data: dict[str, np.ndarray], cfg: ReportConfig) -> dict:
    """Params, bootstrap CIs, fit stats, the residual scatter, the bootstrap parameter samples
    (``qscale.laws.uncertainty``: what ``qscale predict`` and the ranking turn into intervals) and the
    held-out validation (largest N, then largest D, held out: ``qscale.laws.validate``) from the laws
    engine (SPEC §5). ``data`` holds the kept points with their ``qid_se``."""
    problem = make_problem(LAW_NAME, data, "qid")
    res = fit_problem(problem, target="qid")
    boot = bootstrap_problem(problem, res, cfg.n_boot, cfg.seed) if cfg.n_boot else None
    ci = boot.ci() if boot else {}
    resid = problem.form._log_predict(res.theta, problem.X) - problem.y
    scatter = fit_scatter(resid, len(problem.form.params), data["qid_se"] / data["qid"])
    validation = validate_all(data, LAW_NAME, target="qid", n_boot=max(cfg.n_boot, MIN_SAMPLES), seed=cfg.seed)
    return {
        "params": dict(res.params),
        "ci": {k: tuple(v) for k, v in ci.items()},
        "stats": res.stats(),
        "validation": validation,
        "bootstrap": samples_record(boot) if boot else None,
        "scatter": scatter.as_dict(),
    }


def fit_method(method: str, rows: list[dict], cfg: ReportConfig) -> MethodFit:
    """Apply the noise policy to one method's rows and fit the unified law on the kept points."""
    c = _columns(rows)
    keep = cfg.noise.keep(c["qid"], c["qid_se"])
    by_bits = {int(p): int(((~keep) & (c["P"] == p)).sum()) for p in sorted(set(c["P"].tolist()))}
    excluded = {"total": int((~keep).sum()), "nonpositive": int((c["qid"] <= 0).sum()), "by_bits": by_bits}
    out = MethodFit(method, len(rows), excluded, summarize_noise(c["qid"], c["qid_se"], c["P"], cfg.noise))
    data = {k: c[k][keep] for k in ("N", "D", "P", "qid", "qid_se")}
    varying = [k for k in ("N", "D", "P") if len(np.unique(data[k])) < 2]
    if keep.sum() < MIN_FIT_POINTS or varying:
        why = (
            f"only {int(keep.sum())} point{'' if keep.sum() == 1 else 's'} above the noise floor"
            if keep.sum() < MIN_FIT_POINTS
            else f"the points above the noise floor have a single value of {', '.join(varying)}"
        )
        out.error = f"not fitted: {why}"
        return out
    for name, value in _fit_law(data, cfg).items():
        setattr(out, name, value)
    return out


def inversion_table(fit: MethodFit, sizes: dict[str, int], cfg: ReportConfig) -> list[dict]:
    """Tokens D* for each model size, bit width and threshold by inverting the fitted law."""
    if fit.params is None:
        return []
    return [
        {"model": m, "N": n, "P": p, "qid": q, "tokens": tokens_for_qid(fit.params, q, n, p)}
        for m, n in sizes.items()
        for p in cfg.inversion_bits
        for q in cfg.thresholds
    ]


def _rank_corr(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def trends(rows: list[dict]) -> dict:
    """Model-free directions, counted over the raw points (no noise policy, no fit).

    D: per (P, model) series, sign of the rank correlation of QiD with D.
    N: per (P, D) with >= 2 sizes, whether QiD at the largest N is below that at the smallest N.
    P: per (model, D) and each pair of consecutive bit widths, whether QiD falls with more bits.
    """
    c = _columns(rows)
    out = {"D": {"grows": 0, "falls": 0, "flat": 0}, "N": {"falls": 0, "grows": 0}, "P": {"falls": 0, "grows": 0}}
    for p in np.unique(c["P"]):
        for m in np.unique(c["model"]):
            s = (c["P"] == p) & (c["model"] == m)
            rho = _rank_corr(c["D"][s], c["qid"][s])
            out["D"]["flat" if not np.isfinite(rho) or rho == 0 else ("grows" if rho > 0 else "falls")] += 1
        for d in np.unique(c["D"][c["P"] == p]):
            s = (c["P"] == p) & (c["D"] == d)
            if len(np.unique(c["N"][s])) >= 2:
                lo, hi = np.argmin(c["N"][s]), np.argmax(c["N"][s])
                out["N"]["falls" if c["qid"][s][hi] < c["qid"][s][lo] else "grows"] += 1
    for m in np.unique(c["model"]):
        for d in np.unique(c["D"][c["model"] == m]):
            s = (c["model"] == m) & (c["D"] == d)
            order = np.argsort(c["P"][s])
            q = c["qid"][s][order]
            for a, b in pairwise(q):
                out["P"]["falls" if b < a else "grows"] += 1
    return out


def fp_losses(rows: list[dict]) -> list[dict]:
    """The full-precision loss of every measured checkpoint (what ``qscale predict`` checks a QiD against)."""
    seen = {(r["model"], int(r["N"]), int(r["D"])): float(r["loss_fp"]) for r in rows if "loss_fp" in r}
    return [{"model": m, "N": n, "D": d, "loss_fp": v} for (m, n, d), v in sorted(seen.items())]


def _strict_json(obj):
    """Non-finite floats (undefined inversions, missing intervals) as null, so fit.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strict_json(v) for v in obj]
    return obj


@dataclass(frozen=True)
class Report:
    """Where a written report lies and what it found."""

    folder: Path
    fits: dict[str, MethodFit]
    files: tuple[Path, ...]


def write_qid_report(
    rows: list[dict],
    out_dir: str | Path,
    cfg: ReportConfig | None = None,
    title: str = "QiD study",
    context: dict | None = None,
) -> Report:
    """Fit every method in ``rows`` and write ``fit.json``, ``summary.md`` and PNG plots to ``out_dir``."""
    cfg = cfg or ReportConfig()
    if not rows:
        raise QscaleError("no QiD rows to report: the study has not measured any cell yet")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = sorted({r["method"] for r in rows})
    by_method = {m: [r for r in rows if r["method"] == m] for m in methods}
    fits = {m: fit_method(m, by_method[m], cfg) for m in methods}
    sizes = dict(sorted({r["model"]: int(r["N"]) for r in rows}.items(), key=lambda kv: kv[1]))
    inversions = {m: inversion_table(fits[m], sizes, cfg) for m in methods}
    trend = {m: trends(by_method[m]) for m in methods}
    d_range = (min(r["D"] for r in rows), max(r["D"] for r in rows))

    files = []
    for m in methods:
        path = out / f"qid_vs_D_{m}.png"
        atomic_write_bytes(path, plot_qid_vs_d(by_method[m], fits[m], cfg.noise, m))
        files.append(path)
    path = out / "observed_vs_predicted.png"
    atomic_write_bytes(path, plot_observed_vs_predicted(by_method, fits, cfg.noise))
    files.append(path)
    path = out / "heldout_parity.png"
    atomic_write_bytes(
        path, plot_parity({m: f.validation or {h: {"error": f.error} for h in ("N", "D")} for m, f in fits.items()})
    )
    files.append(path)

    doc = {
        "title": title,
        "law": LAW_TEXT,
        "law_name": LAW_NAME,
        "noise_policy": cfg.noise.describe(),
        "n_boot": cfg.n_boot,
        "n_rows": len(rows),
        "sizes": sizes,
        "measured_D_range": list(d_range),
        "ranges": {c: [min(r[c] for r in rows), max(r[c] for r in rows)] for c in ("N", "D", "P")},
        "fp_losses": fp_losses(rows),
        "context": context or {},
        "methods": {m: fits[m] for m in methods},
        "inversion": inversions,
        "trends": trend,
        "ranking": rank_at_target(LAW_NAME, fits, cfg.target),
    }
    atomic_write_json(out / "fit.json", _strict_json(to_jsonable(doc)))
    files.append(out / "fit.json")
    md = summary_markdown(title, fits, inversions, trend, sizes, d_range, cfg, context or {}, doc["ranking"])
    atomic_write_bytes(out / "summary.md", md.encode())
    files.append(out / "summary.md")
    return Report(out, fits, tuple(files))
