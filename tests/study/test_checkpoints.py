"""Your own suite: checkpoint discovery (folder, glob, manifest; D from metadata, manifest or step x tokens
per step), one-line errors, and ``qscale study qid --checkpoints`` end to end, resumable and reproducible."""

import dataclasses
import json
import shutil

import pytest

from qscale.cli import main
from qscale.errors import QscaleError
from qscale.study.checkpoints import discover
from qscale.study.qat import build_qat_study, run_qat_study
from qscale.study.qat_cells import TABLES as QAT_TABLES
from qscale.study.qat_grid import QatGrid
from qscale.study.qid_cells import TABLES
from qscale.study.store import SqliteStore

from .conftest import BATCH, SEQ, SIZES, STEPS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TPS = BATCH * SEQ


def test_folder_glob_and_manifest_find_the_same_suite(pythia_like, tmp_path):
    suite, _, _ = pythia_like
    found = discover(suite, tokens_per_step=TPS)
    assert [(c.size, c.D) for c in found] == [(s, k * TPS) for s in SIZES for k in STEPS]
    assert all(c.N is None and c.tokenizer.endswith("tokenizer.json") for c in found)
    assert [c.path for c in discover(f"{suite}/*/step*", TPS)] == [c.path for c in found]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,size,D,N\n" + "".join(f"{c.path},{c.size}-x,{c.D * 10},{123}\n" for c in found[:3]))
    got = discover(manifest)
    assert [(c.size, c.D, c.N) for c in got] == [(f"{c.size}-x", c.D * 10, 123) for c in found[:3]]


def test_d_from_qscale_metadata_and_sizes_grouped_by_config(pythia_like, tmp_path):
    suite, _, _ = pythia_like
    flat = tmp_path / "flat"  # checkpoints of both sizes side by side, D only in qscale.json
    for i, c in enumerate(discover(suite, TPS)):
        dst = flat / f"ckpt-{i}"
        shutil.copytree(c.path, dst)
        (dst / "qscale.json").write_text(json.dumps({"tokens": 1000 + i, "step": i}))
    got = discover(flat)
    assert sorted({c.size for c in got}) == ["gpt_neox-d32-L2", "gpt_neox-d64-L2"]
    assert sorted(c.D for c in got) == [1000 + i for i in range(len(STEPS) * len(SIZES))]


def test_bad_suites_are_one_line_errors(pythia_like, tmp_path, capsys):
    suite, _, _ = pythia_like
    with pytest.raises(QscaleError, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QscaleError, match="no checkpoints found"):
        discover(tmp_path / "empty")
    with pytest.raises(QscaleError, match="pass --tokens-per-step"):
        discover(suite)
    shutil.copytree(suite / "neox-a" / f"step{STEPS[0]}", tmp_path / "odd" / "final")
    with pytest.raises(QscaleError, match="cannot derive D"):
        discover(tmp_path / "odd", TPS)
    bad = tmp_path / "bad.csv"
    bad.write_text("folder\nx\n")
    with pytest.raises(QscaleError, match="'path' column"):
        discover(bad)
    assert main(["study", "qid", "--checkpoints", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qscale: error:") and "does not exist" in err and len(err.strip().splitlines()) == 1
    assert main(["study", "qid", "--checkpoints", str(suite), "--tokenizer", str(suite), "--out", str(tmp_path)]) == 2
    assert "--tokenizer does not apply" in capsys.readouterr().err
    assert main(["study", "qid", "--target", "7e9,2e12", "--preset", "tiny"]) == 2
    assert "--target must be three" in capsys.readouterr().err


def _run(out, suite, data, calib, capsys) -> str:
    code = main(
        [
            "study",
            "qid",
            "--checkpoints",
            str(suite),
            "--tokens-per-step",
            str(TPS),
            "--preset",
            "tiny",
            "--data",
            str(data),
            "--calib-data",
            str(calib),
            "--target",
            "7e9,2e12,4",
            "--out",
            str(out),
            "--eval-windows",
            "32",
            "--bits",
            "2,3,4",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.err


def _rows(out):
    with SqliteStore(out / "study.sqlite", TABLES) as s:
        return [
            {k: v for k, v in r.items() if not k.endswith("_s") and k not in ("created_at", "versions")}
            for r in s.rows("qid")
        ], s.count("qid_fp")


def test_study_on_a_pythia_like_suite_end_to_end(pythia_like, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QSCALE_CACHE", str(tmp_path / "cache"))
    suite, data, calib = pythia_like
    n_cells = len(SIZES) * len(STEPS) * 2 * 3  # rtn, gptq at 2, 3 and 4 bits
    err = _run(tmp_path / "a", suite, data, calib, capsys)
    assert f"{n_cells} cells measured, 0 already in the store; {n_cells} rows reported" in err
    rows, n_fp = _rows(tmp_path / "a")
    assert len(rows) == n_cells and n_fp == len(SIZES) * len(STEPS)
    assert {(r["model"], r["D"]) for r in rows} == {(s, k * TPS) for s in SIZES for k in STEPS}
    for r in rows:
        assert r["qid"] == pytest.approx(r["loss_q"] - r["loss_fp"]) and r["qid_se"] > 0
    n_by_size = {r["model"]: r["N"] for r in rows}
    assert n_by_size["neox-a"] < n_by_size["neox-b"]
    fp = {(r["model"], r["D"]): r["loss_fp"] for r in rows}
    for size in SIZES:  # D matters: more training, lower loss
        assert fp[(size, STEPS[-1] * TPS)] < fp[(size, STEPS[0] * TPS)] - 0.1
    report = tmp_path / "a" / "report"
    doc = json.loads((report / "fit.json").read_text())
    assert set(doc["methods"]) == {"rtn", "gptq"} and doc["n_rows"] == n_cells
    assert doc["ranking"]["target"] == {"N": 7e9, "D": 2e12, "P": 4.0}
    summary = (report / "summary.md").read_text()
    assert "neox-a" in summary and "checkpoints of 2 sizes" in summary

    again = _run(tmp_path / "a", suite, data, calib, capsys)  # a re-run computes nothing
    assert f"0 cells measured, {n_cells} already in the store" in again

    _run(tmp_path / "b", suite, data, calib, capsys)  # the same command in a fresh folder: the same rows
    assert _rows(tmp_path / "b") == (rows, n_fp)


def test_qat_vs_ptq_on_the_users_checkpoints(pythia_like, tmp_path, monkeypatch):
    monkeypatch.setenv("QSCALE_CACHE", str(tmp_path / "cache"))
    suite, data, _ = pythia_like
    study = build_qat_study(
        "tiny", out=tmp_path / "qat", data=data, checkpoints=str(suite), tokens_per_step=TPS, recipes=("lsq",)
    )
    grid = QatGrid(
        sizes=("xs",),
        steps=(2,),
        groups=(16,),
        schemes=("W4A4",),
        fc2_steps=(2,),
        batch_size=2,
        seq_len=16,
        warmup_steps=1,
        eval_windows=4,
        attribution=("xs", 2, 16),
        attribution_windows=1,
        control=False,
    )
    compare = dataclasses.replace(study.compare, schemes=("W4A16",))
    study = dataclasses.replace(study, grid=grid, compare=compare, n_boot=0)
    res = run_qat_study(study, progress=False)
    with SqliteStore(study.store_path, QAT_TABLES) as s:
        ptq = s.rows("qat_ptq")
    final = {c.size: c for c in discover(suite, TPS) if c.D == STEPS[-1] * TPS}
    assert {(r["model"], r["method"], r["scheme"]) for r in ptq} == {
        (size, m, sc)
        for size in SIZES
        for m, sc in (("checkpoint", "W16A16"), ("gptq", "W4A16"), ("fp-finetune", "W16A16"), ("lsq", "W4A16"))
    }
    assert all(r["checkpoint"] == final[r["model"]].path and r["D"] == final[r["model"]].D for r in ptq)
    assert set(res.report.qat_vs_ptq) == set(SIZES)
    assert run_qat_study(study, progress=False).computed == 0
