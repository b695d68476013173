"""The QAT report: the law fit recovers known exponents, c, the FC2 reduction, attribution ranks, QAT vs PTQ."""

import json

import numpy as np
import pytest

from qscale.report.qat import attribution_table, c_factor, fc2_reduction, qat_vs_ptq, write_qat_report
from qscale.report.qat_fit import fit_scheme
from qscale.report.qat_law import predict_delta

TRUE = {"k": 0.15, "gamma_N": 0.22, "gamma_D": 0.075, "gamma_G": 0.78}  # Chen et al. W4A4 (SPEC §2)


def _law(p, N, D, G):
    """δ = k·D^γD·(log2 G)^γG / N^γN typed out here (Chen et al. 2025, SPEC §2), independent of the engine."""
    return p["k"] * D ** p["gamma_D"] * np.log2(G) ** p["gamma_G"] / N ** p["gamma_N"]


def test_report_law_is_the_papers_formula():
    for N, D, G in ((1e5, 1e4, 16), (3e8, 2e10, 128)):
        assert float(predict_delta(TRUE, N, D, G)) == pytest.approx(_law(TRUE, N, D, G), rel=1e-12)


def _cells(scheme="W4A4", params=TRUE, scale=1.0, se=1e-4):
    rows = []
    for model, N in (("xs", 1e5), ("s", 3e5), ("m", 8e5)):
        for D in (1e4, 3e4, 1e5):
            for G in (16, 32, 128):
                d = scale * float(_law(params, N, D, G))
                rows.append(
                    {
                        "model": model,
                        "N": N,
                        "D": D,
                        "G": G,
                        "G_eff": G,
                        "scheme": scheme,
                        "delta": d,
                        "delta_se": se,
                        "delta_train": d,
                        "per_window": np.zeros(3),
                    }
                )
    return rows


def test_fit_recovers_the_law_it_was_generated_from():
    f = fit_scheme(_cells(), "W4A4", "delta", n_boot=0, seed=0)
    assert f.error is None and f.n_excluded == 0
    for p, v in TRUE.items():
        assert f.params[p] == pytest.approx(v, rel=1e-3)


def test_points_under_the_noise_floor_are_excluded_and_counted():
    rows = _cells(se=1e-4)
    rows[0]["delta"], rows[1]["delta"], rows[2]["delta_se"] = -0.01, 0.0, 1.0  # <= 0, <= 0, under 2 SE
    f = fit_scheme(rows, "W4A4", "delta", n_boot=0, seed=0)
    assert (f.n_excluded, f.n_nonpositive, f.stats["n_points"]) == (3, 2, len(rows) - 3)


def test_c_factor_by_definition():
    a16 = _cells("W4A16", scale=1.0)
    a4 = _cells("W16A4", scale=0.5)
    w4a4 = [dict(r, scheme="W4A4", delta=0.9 * (r["delta"] + s["delta"])) for r, s in zip(a16, a4, strict=True)]
    c = c_factor(a16 + a4 + w4a4)
    assert c["n"] == 27 and c["c"] == pytest.approx(0.9) and c["median_ratio"] == pytest.approx(0.9)


def test_fc2_reduction_and_floor():
    base = [{"model": "m", "D": 1, "scheme": "W4A4", "G": g, "delta": 0.2, "delta_se": 0.01} for g in (32, 0)]
    fixed = [
        {"model": "m", "D": 1, "scheme": "W4A4-fc2a8", "G": 32, "delta": 0.15, "delta_se": 0.01},
        {"model": "m", "D": 1, "scheme": "W4A4-fc2a8", "G": 0, "delta": 0.1, "delta_se": 0.01},
    ]
    noisy = [
        {"model": "s", "D": 1, "scheme": "W4A4", "G": 32, "delta": 0.01, "delta_se": 0.01},
        {"model": "s", "D": 1, "scheme": "W4A4-fc2a8", "G": 32, "delta": 0.0, "delta_se": 0.01},
    ]
    r = fc2_reduction(base + fixed + noisy)["W4A4"]
    assert r["by_G"]["32"]["mean_reduction"] == pytest.approx(0.25)
    assert r["by_G"]["0"]["mean_reduction"] == pytest.approx(0.5)
    assert r["mean_reduction"] == pytest.approx(0.375) and r["n_below_floor"] == 1


def test_attribution_ranks_the_heavy_tailed_input_first():
    attr = [
        {
            "scheme": "W16A4",
            "model": "m",
            "D": 1,
            "G": 16,
            "layer": f"model.layers.{i}.{t}",
            "mse": 1.0,
            "rel_mse": rel,
            "kurtosis": k,
            "n": 10,
        }
        for i in range(2)
        for t, k, rel in (("q_proj", 3.0, 0.01), ("down_proj", 90.0, 0.05), ("o_proj", 5.0, 0.02))
    ]
    a = attribution_table(attr)["W16A4"]
    assert a["down_proj_rank_kurtosis"] == 1 and a["down_proj_rank_rel_mse"] == 1
    assert a["by_type"]["down_proj"]["kurtosis"] == 90.0 and a["by_type"]["q_proj"]["n_layers"] == 2


def test_qat_vs_ptq_deltas_against_checkpoint_and_control():
    def row(method, scheme, pw):
        return {
            "model": "xs",
            "N": 10,
            "D": 100,
            "G": 32,
            "method": method,
            "scheme": scheme,
            "loss": float(np.mean(pw)),
            "per_window": np.array(pw),
            "train_loss": None,
            "steps": 0,
            "seconds": 0.0,
        }

    ptq = [
        row("checkpoint", "W16A16", [3.0, 3.0]),
        row("gptq", "W4A16", [3.10, 3.10]),
        row("fp-finetune", "W16A16", [2.9, 2.9]),
        row("lsq", "W4A16", [2.95, 2.95]),
    ]
    t = qat_vs_ptq(ptq)["xs"]
    assert t["rows"]["gptq W4A16"]["delta_ckpt"] == pytest.approx(0.10)
    assert t["rows"]["lsq W4A16"]["delta_ckpt"] == pytest.approx(-0.05)
    assert t["rows"]["lsq W4A16"]["delta_ctrl"] == pytest.approx(0.05)
    assert t["w4a16_vs_gptq"]["lsq"] == {"beats_gptq_vs_checkpoint": True, "beats_gptq_vs_control": True}


def test_write_report(tmp_path):
    cells = _cells("W4A4") + _cells("W4A16", scale=0.6) + _cells("W16A4", scale=0.5)
    rep = write_qat_report(cells, [], [], [], tmp_path, n_boot=5)
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["fits"]["W4A4 delta"]["params"]["gamma_G"] == pytest.approx(0.78, rel=1e-3)
    assert fit["c_factor"]["held_out"]["c"] == pytest.approx(1 / 1.1)
    assert set(fit["fits"]["W4A4 delta"]["ci"]) == {"k", "gamma_N", "gamma_D", "gamma_G"}
    assert (tmp_path / "delta_vs_D_W16A4.png").read_bytes()[:4] == b"\x89PNG"
    assert "c = 0.909" in (tmp_path / "summary.md").read_text() and rep.fits["W4A16 delta"].params is not None
    v = fit["fits"]["W4A4 delta"]["validation"]  # exact law, no noise: the held-out points are predicted exactly
    assert v["N"]["n_test"] == 9 and v["D"]["n_test"] == 9 and v["N"]["median_abs_rel_error"] < 1e-3
    assert v["N"]["covered"] == 9 and len(v["N"]["pairs"]) == 9
    assert fit["fits"]["W4A4 delta_train"]["validation"] is None  # only the held-out δ is validated
    assert (tmp_path / "heldout_parity.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Held-out validation" in (tmp_path / "summary.md").read_text()


def test_predict_reads_a_qat_fit_json_with_both_intervals(tmp_path, capsys):
    from qscale.cli import main

    rng = np.random.default_rng(0)
    cells = [{**c, "delta": c["delta"] * np.exp(rng.normal(0, 0.05))} for c in _cells("W4A4", se=1e-3)]
    write_qat_report(cells, [], [], [], tmp_path, n_boot=200)
    argv = ["predict", "--params", str(tmp_path / "fit.json"), "--N", "3e5", "--D", "3e4", "--G", "32"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "W4A4 delta: delta = " in out and "95% PI" in out and "of the mean law" in out
