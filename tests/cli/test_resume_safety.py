"""Resuming a run folder never runs code from it: a crafted pickle in a state file is refused with one line."""

import pytest
import torch

from qscale.cli import main


class _Payload:
    """Unpickling calls ``open(marker, "w")``: the file appearing is proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _craft(path, marker):
    torch.save({"state": {}, "param_groups": [_Payload(marker)], "torch": torch.zeros(1)}, path)


def test_the_payload_runs_under_an_unsafe_load(tmp_path):
    """The crafted file is a real exploit: ``weights_only=False`` executes it (what resume did before)."""
    _craft(tmp_path / "x.pt", tmp_path / "ran")
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert (tmp_path / "ran").exists()


def _assert_refused(rc, err, marker):
    assert rc == 2 and not marker.exists()
    assert len(err.strip().splitlines()) == 1 and err.startswith("qscale: error: ") and "Traceback" not in err
    assert "refusing to load" in err


@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt"])
def test_train_resume_refuses_a_crafted_state_file(data_cfg, streams, monkeypatch, tmp_path, capsys, name):
    monkeypatch.setenv("QSCALE_CACHE", str(data_cfg.cache_dir))
    args = [
        "train",
        "--size",
        "xs",
        "--tokens",
        str(2 * 8 * 32),
        "--batch-size",
        "8",
        "--seq-len",
        "32",
        "--vocab-size",
        "512",
        "--max-files",
        "40",
        "--warmup-steps",
        "1",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    assert main(args) == 0  # an honest state file resumes
    capsys.readouterr()
    marker = tmp_path / "ran"
    _craft(tmp_path / "run" / "state" / name, marker)
    _assert_refused(main(args), capsys.readouterr().err, marker)


def test_qat_resume_refuses_a_crafted_state_file(user_models, corpus, cache, tmp_path, capsys):
    out, marker = tmp_path / "qat", tmp_path / "ran"
    state = tmp_path / ".qat.qat-state"  # where a killed ``qscale qat`` leaves its state (commands/qat.py)
    state.mkdir()
    _craft(state / "state.pt", marker)
    rc = main(
        [
            "qat",
            str(user_models["neox"]),
            "--recipe",
            "ste",
            "--tokens",
            "640",
            "--group-size",
            "32",
            "--out",
            str(out),
            "--data",
            str(corpus),
            "--eval-windows",
            "8",
            "--seq-len",
            "64",
            "--batch-size",
            "2",
            "--no-progress",
        ]
    )
    _assert_refused(rc, capsys.readouterr().err, marker)
    assert not out.exists()
