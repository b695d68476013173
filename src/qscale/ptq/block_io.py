"""A decoder block's calibration inputs: captured once from the model, then run block by block."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from dataclasses import dataclass
from functools import cache

from rich.progress import track
from torch import Tensor, nn

CALIB_BATCH = 16  # calibration windows per forward pass (and per Hessian update)


@cache
def _malloc_trim():
    """glibc's ``malloc_trim`` (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand memory freed on the heap back to the OS (glibc keeps it mapped otherwise: tensors freed between
    calibration passes would stay in the process's resident set). A no-op where there is no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class Stop(Exception):
    """Raised from a hook to end a forward pass early."""


@dataclass
class BlockInput:
    """One calibration batch's inputs to the current block (or one chunk of its windows).

    ``ends_batch``: this is the last chunk of a calibration batch of ``CALIB_BATCH`` windows (a batch captured
    whole is one chunk).
    """

    args: tuple
    kwargs: dict
    ends_batch: bool = True

    def hidden(self) -> Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, h: Tensor) -> BlockInput:
        if self.args:
            return BlockInput((h, *self.args[1:]), self.kwargs, self.ends_batch)
        return BlockInput(self.args, {**self.kwargs, "hidden_states": h}, self.ends_batch)


def run_block(block: nn.Module, inp: BlockInput) -> Tensor:
    """The block's hidden-state output for one captured batch of its inputs."""
    out = block(*inp.args, **inp.kwargs)
    return out[0] if isinstance(out, tuple) else out


def capture_block_inputs(
    model: nn.Module, block: nn.Module, calib: Tensor, progress: bool, chunk_rows: int | None = None
) -> list[BlockInput]:
    """The inputs of ``block`` (hidden states and keyword arguments) for each batch of ``calib`` windows.

    ``chunk_rows``: each batch of ``CALIB_BATCH`` windows is captured in chunks of about that many tokens
    (whole windows, at least one), so a forward pass over a chunk holds a fraction of a batch's activations;
    the last chunk of each batch says so (``ends_batch``).
    """
    captured = []

    def pre_hook(mod, args, kwargs):
        captured.append(BlockInput(args, dict(kwargs)))
        raise Stop

    device = next(model.parameters()).device
    per_chunk = CALIB_BATCH if chunk_rows is None else max(1, min(CALIB_BATCH, chunk_rows // calib.shape[1]))
    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for batch in track(calib.split(CALIB_BATCH), description="calibration", disable=not progress, transient=True):
            for ids in batch.split(per_chunk):
                try:
                    model(input_ids=ids.to(device), use_cache=False)
                except Stop:
                    pass
                captured[-1].ends_batch = False
            captured[-1].ends_batch = True
    finally:
        handle.remove()
    return captured
