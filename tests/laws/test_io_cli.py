"""Inputs (CSV, Parquet, SQLite with column mapping) and the fit / predict commands."""

import csv
import json
import sqlite3

import numpy as np
import pytest

from qscale.cli import main
from qscale.errors import QscaleError
from qscale.laws import load_table


@pytest.fixture
def rows(qid_data):
    d = qid_data(0, 30, noise=0.02)
    return [
        {"n_params": n, "D": t, "P": p, "qid": q, "method": "gptq" if i % 3 else "rtn"}
        for i, (n, t, p, q) in enumerate(zip(d["N"], d["D"], d["P"], d["qid"], strict=True))
    ]


def write_csv(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_sqlite(path, rows, tables=("qid",)):
    con = sqlite3.connect(path)
    for t in tables:
        con.execute(f"CREATE TABLE {t} (n_params REAL, D REAL, P REAL, qid REAL, method TEXT)")
        con.executemany(f"INSERT INTO {t} VALUES (?, ?, ?, ?, ?)", [tuple(r.values()) for r in rows])
    con.commit()
    con.close()


def test_csv_parquet_sqlite_load_the_same(tmp_path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_csv(tmp_path / "a.csv", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    write_sqlite(tmp_path / "a.sqlite", rows)
    loaded = [load_table(tmp_path / f"a.{s}", columns={"N": "n_params"}) for s in ("csv", "parquet", "sqlite")]
    for d in loaded:
        np.testing.assert_allclose(d["N"], [r["n_params"] for r in rows], rtol=1e-15)
        assert list(d["method"][:3]) == ["rtn", "gptq", "gptq"]
    only_gptq = load_table(tmp_path / "a.sqlite", where="method = 'gptq'")
    assert len(only_gptq["qid"]) == 20


def test_load_errors(tmp_path, rows):
    write_csv(tmp_path / "a.csv", rows)
    write_sqlite(tmp_path / "two.db", rows, tables=("a", "b"))
    with pytest.raises(QscaleError, match="column 'params' \\(for N\\) not found"):
        load_table(tmp_path / "a.csv", columns={"N": "params"})
    with pytest.raises(QscaleError, match="several tables"):
        load_table(tmp_path / "two.db")
    with pytest.raises(QscaleError, match="no table 'c'"):
        load_table(tmp_path / "two.db", table="c")
    sqlite3.connect(tmp_path / "empty.db").close()  # an empty database (or a WAL store copied without its -wal)
    with pytest.raises(QscaleError, match="has no tables"):
        load_table(tmp_path / "empty.db")
    with pytest.raises(QscaleError, match="bad --where"):
        load_table(tmp_path / "two.db", table="a", where="nope = 1")
    with pytest.raises(QscaleError, match="not found"):
        load_table(tmp_path / "missing.csv")
    with pytest.raises(QscaleError, match="SQLite files only"):
        load_table(tmp_path / "a.csv", table="a")


def test_fit_json_feeds_predict_and_plot(tmp_path, rows, capsys, qid_true):
    write_sqlite(tmp_path / "s.sqlite", rows)
    argv = [
        "fit",
        "--law",
        "qid",
        "--data",
        str(tmp_path / "s.sqlite"),
        "--col",
        "N=n_params",
        "--where",
        "method = 'gptq'",
        "--validate",
        "N",
        "--json",
        "--plot",
        str(tmp_path / "fit.png"),
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["params"]) == {"k", "alpha", "beta", "gamma"} and out["n_points"] == 20
    assert set(out["ci"]) == set(out["params"]) and out["n_boot"] == 200
    assert out["params"]["gamma"] == pytest.approx(qid_true["gamma"], abs=0.3)
    assert {"objective", "r2_log", "rmse_log"} <= set(out) and out["validation"]["N"]["hold"] == "N"
    assert (tmp_path / "fit.png").stat().st_size > 1000
    (tmp_path / "fit.json").write_text(json.dumps(out))
    assert (
        main(
            ["predict", "--params", str(tmp_path / "fit.json"), "--N", "7e10", "--bits", "4", "--qid", "0.2", "--json"]
        )
        == 0
    )
    pred = json.loads(capsys.readouterr().out)
    assert pred["solve_for"] == "D" and pred["value"] > 0
    lo, hi = out["ranges"]["D"]
    assert (lo, hi) == (min(r["D"] for r in rows), max(r["D"] for r in rows))
    assert pred["extrapolation"] and "outside the fitted range" in pred["extrapolation"][0]  # N = 7e10 is far out
    inside = {"N": out["ranges"]["N"][0], "D": lo, "P": 4}
    assert (
        main(
            ["predict", "--params", str(tmp_path / "fit.json"), "--N", str(inside["N"]), "--D", str(lo), "--bits", "4"]
        )
        == 0
    )
    assert "extrapolation" not in capsys.readouterr().out
    assert (
        main(
            ["predict", "--params", str(tmp_path / "fit.json"), "--N", str(inside["N"]), "--bits", "4", "--qid", "1e-9"]
        )
        == 0
    )
    assert "(extrapolation: D = " in capsys.readouterr().out  # the solved D lies far beyond the data


def test_predict_published_text_and_errors(capsys):
    assert (
        main(["predict", "--law", "qid", "--params", "ouyang2024-gptq", "--N", "70e9", "--bits", "4", "--qid", "0.2"])
        == 0
    )
    assert capsys.readouterr().out.strip().splitlines() == [
        "D = 1.02531e+13  (extrapolation: N = 7e+10 is outside the fitted "
        "range 1.6e+08–1.2e+10; D = 1.025e+13 is outside the fitted range "
        "2.097e+06–2.999e+11)",
        "warning: D = 1.03e+13 is 34.2x beyond the largest fitted D (3e+11): held-out checks validate one step "
        "beyond the data, not this far; treat the number as a guess",
    ]  # the paper's own 70B claim extrapolates (N only 5.8x beyond its largest model: no warning for N)
    assert main(["predict", "--params", "chen2025-w4a4", "--N", "595e6", "--D", "1e11", "--G", "128"]) == 0
    assert capsys.readouterr().out.strip() == "delta = 0.0572794"  # inside Chen et al.'s grid: no mark
    assert main(["predict", "--law", "chinchilla", "--params", "ouyang2024-gptq", "--N", "1"]) == 2
    assert "does not match" in capsys.readouterr().err
    assert main(["predict", "--params", "nope", "--N", "1"]) == 2
    assert "neither a published set" in capsys.readouterr().err
    assert main(["predict", "--params", "ouyang2024-gptq", "--N", "7e10", "--qid", "0.2"]) == 2
    assert "leave exactly one" in capsys.readouterr().err


def test_fit_bad_input_exits_2(tmp_path, rows, capsys):
    rows[4]["qid"] = "nan"
    write_csv(tmp_path / "bad.csv", rows)
    assert main(["fit", "--law", "qid", "--data", str(tmp_path / "bad.csv"), "--col", "N=n_params"]) == 2
    assert "column 'qid' data row 5" in capsys.readouterr().err
    assert main(["fit", "--law", "nope", "--data", str(tmp_path / "bad.csv")]) == 2
    assert "unknown law 'nope'" in capsys.readouterr().err
    assert main(["fit", "--law", "qid", "--data", str(tmp_path / "bad.csv"), "--n-boot", "50"]) == 2
    assert ">= 200" in capsys.readouterr().err


def test_plot_functions_write_files(tmp_path, qid_data):
    from qscale.laws import fit_law, plot_law_curves, plot_observed_vs_predicted
    from qscale.laws.published import PUBLISHED

    data = qid_data(0, 24)
    plot_observed_vs_predicted(fit_law("qid", data), data, tmp_path / "obs.png")
    parity = plot_observed_vs_predicted(fit_law("qid", data), data, max_groups=1)  # as the study's: predicted on x
    assert (parity.axes[0].get_xlabel(), parity.axes[0].get_ylabel()) == ("predicted qid", "observed qid")
    fig = plot_law_curves(
        "qid",
        PUBLISHED["ouyang2024-gptq"].params,
        "D",
        np.geomspace(1e9, 1e14, 20),
        [{"N": 7e9, "P": 4.0}, {"N": 7e10, "P": 3.0}],
        tmp_path / "curves.png",
    )
    assert len(fig.axes[0].lines) == 2
    assert (tmp_path / "obs.png").stat().st_size > 1000 and (tmp_path / "curves.png").stat().st_size > 1000
