"""The rows ``qscale fit`` may fit: the studies' noise policy applied to a table of measured differences.

A study measures QiD (or the QAT gap δ) as a paired difference of two held-out losses with its standard
error (``qid_se`` / ``delta_se`` in the store). It fits each method (or QAT scheme) separately, in log space,
on the points above the noise floor, ``value > k · SE`` (``qscale.evaluate.noise.NoisePolicy``, k = 2), and
counts the rest -- every value <= 0 among them -- instead of clipping them. ``qscale fit`` applies the same
policy whenever the table carries a ``<target>_se`` column (a study's store), and then, like the studies,
refuses to pool several methods or schemes into one law.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from qscale.errors import QscaleError
from qscale.evaluate.noise import NoisePolicy
from qscale.laws.data import data_row

GROUP_COLUMNS = {"method": "method", "scheme": "scheme"}  # one law per value, as the studies fit


@dataclass(frozen=True)
class Screening:
    """What the noise policy did to a table: rows in, rows kept, and why the others were excluded."""

    se_column: str
    n_rows: int
    n_kept: int
    n_nonpositive: int
    policy: str

    @property
    def n_excluded(self) -> int:
        return self.n_rows - self.n_kept

    def as_dict(self) -> dict[str, object]:
        return {
            "se_column": self.se_column,
            "n_rows": self.n_rows,
            "n_kept": self.n_kept,
            "n_excluded": self.n_excluded,
            "n_nonpositive": self.n_nonpositive,
            "policy": self.policy,
        }


def check_one_group(rows: Mapping[str, np.ndarray]) -> None:
    """Refuse a table that mixes several methods / schemes: the studies fit one law per method."""
    for col, what in GROUP_COLUMNS.items():
        if col in rows:
            values = sorted({str(v) for v in np.asarray(rows[col], dtype=object)})
            if len(values) > 1:
                raise QscaleError(
                    f"the data holds {len(values)} {what}s ({', '.join(values)}): fit one at a time, "
                    f"e.g. --where \"{col} = '{values[0]}'\" (the studies fit each {what} separately)"
                )


def screen_rows(
    rows: Mapping[str, np.ndarray], target: str, policy: NoisePolicy | None = None
) -> tuple[dict[str, np.ndarray], Screening | None]:
    """The rows above the noise floor when ``<target>_se`` is a column (else all rows, and None)."""
    se_col = f"{target}_se"
    if se_col not in rows or target not in rows:
        return dict(rows), None
    check_one_group(rows)
    policy = policy or NoisePolicy()
    y = np.asarray(rows[target], dtype=float)
    se = np.asarray(rows[se_col], dtype=float)
    if np.isnan(y).any() or np.isnan(se).any():
        col, arr = (target, y) if np.isnan(y).any() else (se_col, se)
        raise QscaleError(f"column {col!r} {data_row(np.flatnonzero(np.isnan(arr))[0])}: missing value")
    keep = policy.keep(y, se)
    kept = {k: np.asarray(v)[keep] for k, v in rows.items()}
    return kept, Screening(se_col, int(y.size), int(keep.sum()), int((y <= 0).sum()), policy.describe())
