"""A QiD study over the tiny grid runs end to end, survives a kill and resumes without duplicates."""

import dataclasses
import json

import pytest

import qscale.study.qid_cells as qid_mod
from qscale.cli import main
from qscale.data import DataConfig, load_token_streams
from qscale.study.grid import QidGrid, get_preset
from qscale.study.qid import build_study, run_qid_study
from qscale.study.qid_cells import TABLES
from qscale.study.store import SqliteStore
from qscale.train import TrainConfig
from qscale.train.suite import SuiteConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def streams(cache):
    p = get_preset("tiny")
    return load_token_streams(
        DataConfig(vocab_size=p.vocab_size, max_files=p.max_files, cache_dir=cache), progress=False
    )


class Counting:
    """Wrap a function, count calls, optionally raise KeyboardInterrupt (a kill) on call number ``kill_at``."""

    def __init__(self, fn, kill_at=None):
        self.fn, self.kill_at, self.calls = fn, kill_at, 0

    def __call__(self, *a, **k):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt
        return self.fn(*a, **k)


def _patch(monkeypatch, kill_at=None):
    q = Counting(qid_mod.quantize_model, kill_at)
    e = Counting(qid_mod.evaluate)
    monkeypatch.setattr(qid_mod, "quantize_model", q)
    monkeypatch.setattr(qid_mod, "evaluate", e)
    return q, e


def _tiny_study(out):
    """2 sizes x 3 checkpoints (steps 1, 2, 4 of 4 x 16 tokens), RTN and GPTQ at 2 and 4 bits."""
    study = build_study("tiny", out=out)
    suite = SuiteConfig(
        "test", ("xs", "s"), TrainConfig(tokens=4 * 4 * 16, batch_size=4, seq_len=16, warmup_steps=1, eval_windows=2)
    )
    grid = QidGrid(
        methods=("rtn", "gptq"),
        bits=(2, 4),
        group_size=32,
        eval_windows=8,
        eval_seq_len=16,
        n_calib=2,
        calib_seq_len=16,
    )
    return dataclasses.replace(study, suite=suite, grid=grid)


def test_tiny_study_end_to_end_kill_and_resume(tmp_path, streams, monkeypatch):
    study = _tiny_study(tmp_path / "study")
    grid = study.grid
    n_cells = len(grid.methods) * len(grid.bits)

    q, _ = _patch(monkeypatch, kill_at=3)  # killed while quantizing the third cell of the first checkpoint
    with pytest.raises(KeyboardInterrupt):
        run_qid_study(study, progress=False, streams=streams)
    with SqliteStore(study.store_path, TABLES) as s:
        assert (s.count("qid"), s.count("qid_fp")) == (2, 1)
    monkeypatch.undo()

    q, e = _patch(monkeypatch)
    res = run_qid_study(study, progress=False, streams=streams)
    n_ckpt = 2 * 3
    assert {r.name for r in (study.suite_dir / "xs").glob("step-*")} == {f"step-{i:06d}" for i in (1, 2, 4)}
    total = n_ckpt * n_cells
    assert res.n_rows == total and (res.computed, res.skipped) == (total - 2, 2)
    assert q.calls == total - 2
    assert e.calls == (total - 2) + (n_ckpt - 1)  # the first checkpoint's full-precision loss was stored
    monkeypatch.undo()

    q, e = _patch(monkeypatch)
    res = run_qid_study(study, progress=False, streams=streams)
    assert (q.calls, e.calls, res.computed, res.skipped) == (0, 0, 0, total)
    with SqliteStore(study.store_path, TABLES) as s:
        rows = s.rows("qid")
        assert s.count("qid") == total
    assert len({(r["model"], r["D"], r["method"], r["P"]) for r in rows}) == total
    for r in rows:
        assert r["qid"] == pytest.approx(r["loss_q"] - r["loss_fp"])
        assert r["qid_se"] > 0 and r["eval_tokens"] == grid.eval_windows * grid.eval_seq_len
        assert r["G"] == grid.group_size and r["N"] < r["N_total"]

    # the same study in a fresh folder, uninterrupted: the same rows, losses bit for bit
    run_qid_study(_tiny_study(tmp_path / "fresh"), progress=False, streams=streams)
    with SqliteStore(tmp_path / "fresh" / "study.sqlite", TABLES) as s:
        fresh = s.rows("qid")
    measured = ("N", "N_total", "loss_fp", "loss_q", "qid", "qid_se", "eval_tokens")
    assert sorted(tuple(r[k] for k in ("model", "D", "method", "P", *measured)) for r in fresh) == sorted(
        tuple(r[k] for k in ("model", "D", "method", "P", *measured)) for r in rows
    )

    folder = study.report_dir
    doc = json.loads((folder / "fit.json").read_text())
    assert set(doc["methods"]) == set(grid.methods) and doc["n_rows"] == total
    for m in grid.methods:
        assert (folder / f"qid_vs_D_{m}.png").stat().st_size > 0
        f = doc["methods"][m]
        assert f["excluded"]["total"] == sum(
            1 for r in rows if r["method"] == m and not (r["qid"] > 0 and r["qid"] > 2 * r["qid_se"])
        )
    assert (folder / "observed_vs_predicted.png").stat().st_size > 0
    assert "Training tokens to reach" in (folder / "summary.md").read_text()


def test_cli_bad_input_is_one_line(capsys, tmp_path, monkeypatch, data_cfg):
    monkeypatch.setenv("QSCALE_CACHE", str(data_cfg.cache_dir))
    assert main(["study", "qid", "--preset", "tiny", "--eval-windows", "100000000", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "validation tokens" in err
    assert not (tmp_path / "o").exists()  # every check before the first write
    assert main(["study", "qid", "--preset", "nope"]) == 2
    assert "unknown study preset" in capsys.readouterr().err
    assert main(["study", "qid", "--preset", "tiny", "--bits", "2,x"]) == 2
    assert main(["study", "qid", "--preset", "tiny", "--bits", "9"]) == 2


def test_build_study_overrides():
    s = build_study("quick", bits=(2, 4), group_size=0, seed=3, thresholds=(0.1,))
    assert s.grid.bits == (2, 4) and s.grid.seed == 3 and s.suite.base.seed == 3
    assert s.grid.ptq_config("rtn", 2).spec.granularity == "channel"
    assert s.report.thresholds == (0.1,) and str(s.out_dir) == "qscale-runs/qid-quick"
    assert dataclasses.replace(s.grid, eval_windows=8).eval_tokens == 8 * s.grid.eval_seq_len
