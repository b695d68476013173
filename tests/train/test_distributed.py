"""Data-parallel training under torchrun: 2 CPU processes on gloo train the tiny model and rank 0 writes the
same checkpoints as one process on the whole batch (DDP averages the gradients)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qscale.train import TrainConfig, list_checkpoints, train
from qscale.train.distributed import Dist, local_slice

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_local_slices_tile_the_batch():
    batch = torch.arange(8 * 3).reshape(8, 3)
    parts = [local_slice(batch, Dist(r, 4, r)) for r in range(4)]
    assert torch.equal(torch.cat(parts), batch) and local_slice(batch, Dist()) is batch


def test_two_process_ddp_equals_one_process(streams, data_cfg, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(WORKER), str(data_cfg.cache_dir), str(tmp_path / "ddp")],
                       check=False, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0 of 2" in r.stdout and "rank 1 of 2" in r.stdout
    cfg = TrainConfig(size="xs", tokens=6 * 8 * 32, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=2,
                      eval_windows=4, grad_accum=2, device="cpu")  # the worker's config
    train(cfg, streams, tmp_path / "one", progress=False)
    ddp, one = list_checkpoints(tmp_path / "ddp"), list_checkpoints(tmp_path / "one")
    assert [c.step for c in ddp] == [c.step for c in one] == [1, 2, 4, 6]
    for a, b in zip(ddp, one):
        wa, wb = load_file(str(a.path / "model.safetensors")), load_file(str(b.path / "model.safetensors"))
        for k in wb:  # the same math up to the order of floating-point sums
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
        assert a.meta["val_loss"] == pytest.approx(b.meta["val_loss"], rel=1e-5)
        assert a.meta["train_loss"] == pytest.approx(b.meta["train_loss"], rel=1e-5)
