"""Data-parallel training under torchrun: ``qscale train`` in 2 CPU processes on gloo writes, from rank 0
only, the same checkpoints as one process on the whole batch (DDP averages the gradients)."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from qscale.cli import main
from qscale.train import list_checkpoints
from qscale.train.distributed import Dist, local_slice

ARGS = [
    "train",
    "--size",
    "xs",
    "--tokens",
    str(6 * 8 * 32),
    "--batch-size",
    "8",
    "--seq-len",
    "32",
    "--grad-accum",
    "2",
    "--vocab-size",
    "512",
    "--max-files",
    "40",
    "--warmup-steps",
    "2",
    "--device",
    "cpu",
]


def test_local_slices_tile_the_batch():
    batch = torch.arange(8 * 3).reshape(8, 3)
    parts = [local_slice(batch, Dist(r, 4, r)) for r in range(4)]
    assert torch.equal(torch.cat(parts), batch) and local_slice(batch, Dist()) is batch


def test_torchrun_two_processes_equal_one_process(streams, data_cfg, tmp_path, monkeypatch, capsys):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "OMP_NUM_THREADS": "1",
        "QSCALE_CACHE": str(data_cfg.cache_dir),
    }
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "qscale.cli",
            *ARGS,
            "--out",
            str(tmp_path / "ddp"),
        ],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "data-parallel training on 2 processes (4 sequences each per step)" in r.stderr
    assert r.stdout.count("validation loss") == 1  # rank 0 alone reports
    monkeypatch.setenv("QSCALE_CACHE", str(data_cfg.cache_dir))
    assert main([*ARGS, "--out", str(tmp_path / "one")]) == 0
    ddp, one = list_checkpoints(tmp_path / "ddp"), list_checkpoints(tmp_path / "one")
    assert [c.step for c in ddp] == [c.step for c in one] == [1, 2, 4, 6]
    for a, b in zip(ddp, one, strict=True):
        wa, wb = load_file(str(a.path / "model.safetensors")), load_file(str(b.path / "model.safetensors"))
        for k in wb:  # the same math up to the order of floating-point sums
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
        assert a.meta["val_loss"] == pytest.approx(b.meta["val_loss"], rel=1e-5)
        assert a.meta["train_loss"] == pytest.approx(b.meta["train_loss"], rel=1e-5)
