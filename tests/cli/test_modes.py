"""Outputs follow the umask: under umask 022 every folder is 0755 and every file 0644 (readable by a serving
process under another user), though each is written atomically through a temp file or folder."""

import os
import stat

import pytest

from qscale.cli import main


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(root):
    """``{relative path: mode bits}`` of ``root`` and everything under it."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in paths}


def _assert_world_readable(root):
    modes = _modes(root)
    bad = {p: oct(m) for p, m in modes.items() if m != (0o755 if (root / p).is_dir() else 0o644)}
    assert not bad, bad


def test_quantize_qat_and_train_outputs_follow_the_umask(
    user_models, corpus, cache, umask_022, data_cfg, streams, monkeypatch, tmp_path
):
    data = ["--calib-data", str(corpus), "--eval-data", str(corpus)]
    fast = ["--calib-windows", "8", "--eval-windows", "8", "--seq-len", "64", "--no-progress"]
    assert (
        main(
            [
                "quantize",
                str(user_models["neox"]),
                "--out",
                str(tmp_path / "q"),
                "--format",
                "all",
                "--bits",
                "4",
                "--group-size",
                "32",
                *data,
                *fast,
            ]
        )
        == 0
    )
    assert (tmp_path / "q" / "qscale-quantize.json").is_file() and (tmp_path / "q" / "gptq").is_dir()
    _assert_world_readable(tmp_path / "q")
    assert (
        main(
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
                str(tmp_path / "qat"),
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
        == 0
    )
    assert (tmp_path / "qat" / "qscale-qat.json").is_file()
    _assert_world_readable(tmp_path / "qat")
    monkeypatch.setenv("QSCALE_CACHE", str(data_cfg.cache_dir))
    assert (
        main(
            [
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
        )
        == 0
    )
    assert (tmp_path / "run" / "step-000002" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "state" / "model.safetensors").is_file()
    _assert_world_readable(tmp_path / "run")


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_writers_give_the_umask_mode(tmp_path, mask):
    import torch
    from safetensors.torch import save_file

    from qscale.provenance import atomic_write_json
    from qscale.train.checkpoint import atomic_folder

    def write(tmp):
        save_file({"x": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors creates it 0600
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("a")

    old = os.umask(mask)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": 1})
        atomic_folder(tmp_path / "f", write)
    finally:
        os.umask(old)
    modes = _modes(tmp_path)
    assert modes["r.json"] == 0o666 & ~mask
    assert modes["f"] == modes["f/sub"] == 0o777 & ~mask
    assert modes["f/model.safetensors"] == modes["f/sub/a.txt"] == 0o666 & ~mask
