"""Measurement noise of QiD and the fit's policy for points under the noise floor.

QiD = loss_q - loss_fp (Ouyang et al. 2024, arXiv 2411.17691; SPEC §1) is a small difference of two
large numbers. Both losses are measured on the *same* held-out windows, so the noise that matters is
that of the paired per-window differences d_i = loss_q,i - loss_fp,i: its standard error is
SE = std(d) / sqrt(n). A point is only trusted in log space if QiD > k * SE (k = 2 by default, about a
one-sided 98% test that QiD > 0); points at or below that floor -- including every QiD <= 0, typical
at 8 bits and early checkpoints -- are excluded from the log-space fit and counted in the report,
never clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qscale.errors import QscaleError

NOISE_K = 2.0


def paired_se(per_window_fp: np.ndarray, per_window_q: np.ndarray) -> float:
    """Standard error of the mean paired difference (q - fp) over the same evaluation windows."""
    fp = np.asarray(per_window_fp, dtype=np.float64)
    q = np.asarray(per_window_q, dtype=np.float64)
    if fp.shape != q.shape or fp.ndim != 1:
        raise QscaleError(f"paired SE needs two 1-D per-window losses of equal length, got {fp.shape} and {q.shape}")
    if fp.size < 2:
        raise QscaleError("paired SE needs at least 2 evaluation windows")
    return float(np.std(q - fp, ddof=1) / np.sqrt(fp.size))


@dataclass(frozen=True)
class NoisePolicy:
    """Which QiD points enter the log-space fit: those with QiD > k * SE (their own paired SE)."""

    k: float = NOISE_K

    def __post_init__(self) -> None:
        if not self.k >= 0:
            raise QscaleError(f"noise-floor multiplier must be >= 0, got {self.k}")

    def floor(self, se: np.ndarray) -> np.ndarray:
        return self.k * np.asarray(se, dtype=np.float64)

    def keep(self, qid: np.ndarray, se: np.ndarray) -> np.ndarray:
        """Boolean mask of points usable in log space: finite, strictly positive and above the floor."""
        qid = np.asarray(qid, dtype=np.float64)
        return np.isfinite(qid) & (qid > 0) & (qid > self.floor(se))

    def describe(self) -> str:
        return (
            f"points with QiD <= {self.k:g} x their paired standard error (including every QiD <= 0) "
            "are excluded from the log-space fit and counted; nothing is clipped"
        )


@dataclass(frozen=True)
class NoiseSummary:
    """How the measured noise compares with the QiD being fitted."""

    n_points: int
    n_excluded: int
    n_nonpositive: int
    median_se: float
    median_floor: float
    median_qid_kept: float
    max_abs_qid_8bit: float | None

    @property
    def floor_ratio(self) -> float:
        """Median floor / median kept QiD: well below 1 means the fitted points sit clear of the noise."""
        if not np.isfinite(self.median_qid_kept) or self.median_qid_kept <= 0:
            return float("nan")
        return self.median_floor / self.median_qid_kept


def summarize_noise(qid: np.ndarray, se: np.ndarray, bits: np.ndarray, policy: NoisePolicy) -> NoiseSummary:
    """Counts of excluded points and the noise floor relative to the kept QiD (and the 8-bit spread)."""
    qid = np.asarray(qid, dtype=np.float64)
    se = np.asarray(se, dtype=np.float64)
    bits = np.asarray(bits)
    keep = policy.keep(qid, se)
    at8 = qid[bits == 8]
    return NoiseSummary(
        n_points=int(qid.size),
        n_excluded=int((~keep).sum()),
        n_nonpositive=int((qid <= 0).sum()),
        median_se=float(np.median(se)) if se.size else float("nan"),
        median_floor=float(np.median(policy.floor(se))) if se.size else float("nan"),
        median_qid_kept=float(np.median(qid[keep])) if keep.any() else float("nan"),
        max_abs_qid_8bit=float(np.max(np.abs(at8))) if at8.size else None,
    )


def paired_delta(per_window_ref: np.ndarray, per_window_q: np.ndarray) -> tuple[float, float]:
    """δ = mean(q) − mean(ref) over the same windows and its paired standard error."""
    ref, q = np.asarray(per_window_ref, dtype=np.float64), np.asarray(per_window_q, dtype=np.float64)
    return float(q.mean() - ref.mean()), paired_se(ref, q)
