"""Fit + 200 bootstraps of the unified QiD law on 1,000 synthetic points; prints seconds (target < 30 s, 2 cores).

python bench/fit_speed.py [--n 1000] [--n-boot 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from qscale.laws import bootstrap_problem, fit_problem, get_law, make_problem
from qscale.laws.published import PUBLISHED


def synthetic(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = {"N": 10 ** rng.uniform(7.5, 10, n), "D": 10 ** rng.uniform(9, 12, n), "P": rng.choice([2.0, 3.0, 4.0, 8.0], n)}
    x["qid"] = get_law("qid").predict(PUBLISHED["ouyang2024-gptq"].params, x) * np.exp(0.05 * rng.standard_normal(n))
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="data points")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples")
    args = ap.parse_args()
    data = synthetic(args.n)
    t0 = time.perf_counter()
    problem = make_problem("qid", data)
    fit = fit_problem(problem)
    t1 = time.perf_counter()
    boot = bootstrap_problem(problem, fit, n_boot=args.n_boot, seed=0)
    t2 = time.perf_counter()
    print(
        f"qid law, {args.n} points: fit {t1 - t0:.2f} s, {args.n_boot} bootstraps {t2 - t1:.2f} s, "
        f"total {t2 - t0:.2f} s ({boot.n_failed} failed refits)"
    )


if __name__ == "__main__":
    main()
