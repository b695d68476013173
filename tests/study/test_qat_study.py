"""The QAT study: tiny end to end with its report, resume without duplicates, and the δ bookkeeping."""

import dataclasses

import numpy as np
import pytest

import qscale.study.qat_cells as qat_mod
from qscale.cli import main
from qscale.data import DataConfig, load_token_streams
from qscale.data.batches import eval_windows, train_batch
from qscale.evaluate import evaluate
from qscale.evaluate.noise import paired_delta
from qscale.models import build_model
from qscale.study.qat import build_qat_study, run_qat_study
from qscale.study.qat_cells import TABLES, smoothed, train_model
from qscale.study.qat_grid import QatGrid, get_qat_preset, get_scheme
from qscale.study.store import SqliteStore

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    p = get_qat_preset("tiny")
    cfg = DataConfig(
        vocab_size=p.vocab_size, max_files=p.max_files, cache_dir=tmp_path_factory.getbasetemp() / "qscale-cache"
    )
    return load_token_streams(cfg, progress=False)


def _small(out, tmp_path):
    """1 size x 2 D x 2 G, W4A4 and W16A4 (+ fc2 at the larger D, + W8A8 control), no QAT-vs-PTQ part."""
    study = build_qat_study("tiny", out=out, compare=False, qid_dir=tmp_path / "no-qid")
    grid = QatGrid(
        sizes=("xs",),
        steps=(2, 3),
        groups=(16, 0),
        schemes=("W4A4", "W16A4"),
        fc2_steps=(3,),
        batch_size=2,
        seq_len=16,
        warmup_steps=1,
        eval_windows=4,
        attribution=("xs", 3, 16),
        attribution_windows=1,
    )
    return dataclasses.replace(study, grid=grid, n_boot=0)


def test_tiny_cli_runs_end_to_end_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "qat"
    code = main(
        ["study", "qat", "--preset", "tiny", "--out", str(out), "--qid-dir", str(tmp_path / "no-qid"), "--no-progress"]
    )
    assert code == 0
    report = out / "report"
    for name in (
        "fit.json",
        "summary.md",
        "observed_vs_predicted.png",
        "attribution.png",
        "delta_vs_D_W4A4.png",
        "delta_vs_D_W4A16.png",
        "delta_vs_D_W16A4.png",
        "delta_vs_D_W4A4-fc2a8.png",
    ):
        assert (report / name).is_file(), name
    assert f"report: {report / 'summary.md'}" in capsys.readouterr().out
    with SqliteStore(out / "study.sqlite", TABLES) as store:
        # per size: 2 D x 3 schemes x 2 G + fc2 (2 schemes x 2 G at one D) + the W8A8 control at each D
        assert store.count("qat") == 2 * (2 * 3 * 2 + 2 * 2 + 2)
        assert store.count("qat_fp") == 4
        methods = {(r["method"], r["scheme"]) for r in store.rows("qat_ptq")}
    assert ("gptq", "W4A16") in methods and ("fp-finetune", "W16A16") in methods
    assert {("lsq", "W4A16"), ("quest", "W4A16"), ("ste", "W4A4")} <= methods
    summary = (report / "summary.md").read_text()
    assert "W4A16 below GPTQ W4" in summary and "Training-noise control" in summary


def test_resume_after_a_kill_adds_no_duplicates(tmp_path, streams, monkeypatch):
    study = _small(tmp_path / "qat", tmp_path)
    real, calls = qat_mod.train_model, {"n": 0}

    def killing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(qat_mod, "train_model", killing)
    with pytest.raises(KeyboardInterrupt):
        run_qat_study(study, progress=False, streams=streams)
    with SqliteStore(study.store_path, TABLES) as store:
        partial = store.count("qat")
    assert partial == 2  # fp(D=2), then two cells committed, the third killed
    monkeypatch.setattr(qat_mod, "train_model", real)
    first = run_qat_study(study, progress=False, streams=streams)
    again = run_qat_study(study, progress=False, streams=streams)
    assert again.computed == 0 and first.computed > 0
    with SqliteStore(study.store_path, TABLES) as store:
        rows = store.rows("qat")
        assert store.count("qat_fp") == 2
    keys = [(r["model"], r["D"], r["scheme"], r["G"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 2 * 2 + 2 * 2 + 2


def test_delta_is_paired_on_the_same_windows_and_seed(tmp_path, streams):
    study = _small(tmp_path / "qat", tmp_path)
    run_qat_study(study, progress=False, streams=streams)
    g = study.grid
    with SqliteStore(study.store_path, TABLES) as store:
        row = store.rows("qat", {"model": "xs", "D": g.tokens(3), "scheme": "W4A4", "G": 16})[0]
        fp = store.rows("qat_fp", {"model": "xs", "D": g.tokens(3)})[0]

    # recompute the cell by hand: same init seed, same batches, same held-out windows
    def batches(step):
        return train_batch(streams.train, step, g.batch_size, g.seq_len, g.seed)

    windows = eval_windows(streams.val, g.eval_windows, g.seq_len)
    models, losses = {}, {}
    for name, recipe in (("fp", None), ("q", get_scheme("W4A4").recipe(16))):
        models[name] = build_model("xs", streams.vocab_size, max_seq_len=1024, seed=g.seed)
        losses[name] = train_model(models[name], recipe, batches, 3, g.lr, g.warmup_steps, g.weight_decay)
    assert losses["fp"][0] == pytest.approx(losses["q"][0], rel=0.05)  # same data and init, quantized forward
    ev = {k: evaluate(m, windows, batch_size=g.eval_batch_size) for k, m in models.items()}
    assert fp["loss"] == pytest.approx(ev["fp"].loss, abs=1e-6)
    assert row["loss_fp"] == fp["loss"]
    assert row["loss_q"] == pytest.approx(ev["q"].loss, abs=1e-6)
    assert row["delta"] == pytest.approx(ev["q"].loss - ev["fp"].loss, abs=1e-6)
    assert row["delta_train"] == pytest.approx(smoothed(losses["q"]) - smoothed(losses["fp"]), abs=1e-6)
    assert row["G_eff"] == 16 and row["w_bits"] == 4 and row["a_bits"] == 4


def test_paired_delta_and_smoothing_by_hand():
    delta, se = paired_delta(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.5, 3.1]))
    assert delta == pytest.approx((0.5 + 0.5 + 0.1) / 3)
    assert se == pytest.approx(np.std([0.5, 0.5, 0.1], ddof=1) / np.sqrt(3))
    assert smoothed([9.0] * 10 + [4.0, 2.0]) == pytest.approx(3.0)  # last ceil(12 / 10) = 2 steps
    assert smoothed([5.0]) == 5.0


def test_fc2_scheme_keeps_the_down_proj_input_at_8_bits():
    from qscale.qat import plan_layers

    model = build_model("xs", 300, seed=0)
    plans = plan_layers(model, get_scheme("W16A4-fc2a8").recipe(16))
    assert {p.a_bits for n, p in plans.items() if n.endswith("down_proj")} == {8}
    assert {p.a_bits for n, p in plans.items() if not n.endswith("down_proj")} == {4}
    assert {p.w_bits for p in plans.values()} == {16}


def test_bad_options_are_one_line_errors(capsys):
    assert main(["study", "qat", "--preset", "nope"]) == 2
    assert main(["study", "qat", "--preset", "tiny", "--groups", "a,b"]) == 2
    err = capsys.readouterr().err
    assert "unknown QAT study preset" in err and "comma-separated integers" in err


def test_overrides_keep_the_attribution_and_fc2_cells_inside_the_grid(tmp_path):
    study = build_qat_study("quick", out=tmp_path, sizes=("xs", "s"), steps=(10, 20), groups=(32, 0))
    g = study.grid
    assert g.attribution == ("s", 20, 32) and g.fc2_steps == (20,)
    assert study.data.vocab_size == 512 and study.compare_data.vocab_size == 1024  # the QiD quick suite's tokenizer
    assert g.tokens(20) == 20 * g.batch_size * g.seq_len
