"""Fits on real published measurements (shared/data, SPEC §4–5)."""

import csv
import json
from itertools import pairwise

import numpy as np
import pytest

from qscale.laws import bootstrap_problem, fit_law, fit_problem, make_problem


def chinchilla_points(data_dir):
    """Besiroglu et al.'s points from Chinchilla Fig. 4 without the 5 highest losses; D = FLOP / (6N)."""
    with (data_dir / "chinchilla_fig4_extracted.csv").open() as f:
        rows = list(csv.DictReader(f))
    N = np.array([float(r["Model Size"]) for r in rows])
    C = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    keep = np.argsort(loss, kind="stable")[:-5]
    return {"N": N[keep], "D": C[keep] / (6 * N[keep]), "loss": loss[keep]}


def test_chinchilla_fit_matches_besiroglu_replication(data_dir):
    """SPEC §5: E = 1.8169, A = 482.01, B = 2085.43, α = 0.3478, β = 0.3658; CIs E [1.769, 1.871],
    α [0.317, 0.373], β [0.331, 0.415]."""
    data = chinchilla_points(data_dir)
    problem = make_problem("chinchilla", data)
    fit = fit_problem(problem)
    p = fit.params
    assert p["E"] == pytest.approx(1.8169, abs=0.01)
    assert p["alpha"] == pytest.approx(0.3478, abs=0.005)
    assert p["beta"] == pytest.approx(0.3658, abs=0.005)
    assert p["A"] == pytest.approx(482.01, rel=0.05)
    assert p["B"] == pytest.approx(2085.43, rel=0.1)
    ci = bootstrap_problem(problem, fit, n_boot=200, seed=0).ci()
    for name, (lo, hi) in {"E": (1.769, 1.871), "alpha": (0.317, 0.373), "beta": (0.331, 0.415)}.items():
        assert ci[name][0] == pytest.approx(lo, abs=0.25 * (hi - lo))
        assert ci[name][1] == pytest.approx(hi, abs=0.25 * (hi - lo))


def quest_label(run: dict) -> str:
    """Precision label from bit widths and quantizer; BF16 runs (no quantizer) are the reference "16"."""
    if run["w_quant"] == "NoQuantizer" and run["a_quant"] == "NoQuantizer":
        return "16"
    quantizer = run["w_quant"] if run["w_quant"] != "NoQuantizer" else run["a_quant"]
    return f"w{run['w_bits']}a{run['a_bits']}-{quantizer.removesuffix('Quantizer')}"


def test_effective_params_on_quest_runs(data_dir):
    runs = json.loads((data_dir / "quest_runs_for_scaling.json").read_text())
    assert len(runs) == 104
    data = {
        "N": np.array([r["non_embedding_parameters"] for r in runs], dtype=float),
        "D": np.array([r["tokens"] for r in runs], dtype=float),
        "loss": np.array([r["loss"] for r in runs], dtype=float),
        "precision": np.array([quest_label(r) for r in runs], dtype=object),
    }
    fit = fit_law("effective_params", data, n_starts=1)
    eff = fit.params["eff"]
    assert eff["16"] == 1.0 and fit.rmse_log < 0.01
    for family in ("HalfHadamardTrust", "Trust"):  # more bits -> eff closer to 1, W8A8 about 1
        chain = [eff[f"w{b}a{b}-{family}"] for b in (2, 3, 4, 8)]
        assert all(a < b for a, b in pairwise(chain)) and chain[-1] == pytest.approx(1.0, abs=0.1)
    weight_only = [eff[f"w{b}a16-HalfHadamardTrust"] for b in (2, 3, 4)]
    assert all(a < b < 1 for a, b in pairwise(weight_only))
    assert eff["w4a16-HalfHadamardTrust"] > eff["w4a4-HalfHadamardTrust"]  # weight-only beats W4A4
