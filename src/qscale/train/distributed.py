"""Data-parallel training under ``torchrun`` (PyTorch DDP): one process per GPU, same run folder.

``torchrun --nproc_per_node 8 -m qscale.cli train --preset gpu`` (or ``--size ...``): every rank builds the
same seeded model and draws the same global batch (batches are a pure function of seed and step), then
trains on its own contiguous slice of ``batch_size / world`` sequences; DDP averages the gradients, so a
step equals the single-process step on the whole batch up to floating-point summation order. Rank 0 alone
evaluates, writes checkpoints and resume state and draws the progress bar; every rank reads the resume state
at start. Backend: NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on CPU (used by the tests).
Without ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from qscale.errors import require


@dataclass(frozen=True)
class Dist:
    """This process's place in the data-parallel group (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), once; returns this
    rank's place and its device (``cuda:LOCAL_RANK`` on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    info = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def wrap(model: nn.Module, info: Dist, device: torch.device) -> nn.Module:
    """``model`` in DDP when distributed (gradients averaged over ranks in ``backward``), else itself."""
    if not info.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def local_slice(batch: Tensor, info: Dist) -> Tensor:
    """This rank's contiguous share of the global batch (the batch size must divide by the world size)."""
    if not info.enabled:
        return batch
    require(
        batch.shape[0] % info.world == 0,
        f"batch size {batch.shape[0]} is not divisible by the {info.world} data-parallel processes",
    )
    n = batch.shape[0] // info.world
    return batch[info.rank * n : (info.rank + 1) * n]


def mean_over_ranks(value: float, info: Dist, device: torch.device) -> float:
    """The mean of a per-rank scalar (the step's loss over the whole batch)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world


def barrier(info: Dist) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint)."""
    if info.enabled:
        dist.barrier()


def is_main_process() -> bool:
    """Rank 0 of a torchrun group, or a plain process (reads the environment: valid before ``setup``)."""
    return os.environ.get("RANK", "0") == "0"


def finish() -> None:
    """Leave the process group (end of a distributed command)."""
    if dist.is_initialized():
        dist.destroy_process_group()
