"""A decoder block's calibration inputs: captured once from the model, then run block by block."""

from __future__ import annotations

from dataclasses import dataclass

from rich.progress import track
from torch import Tensor, nn

CALIB_BATCH = 16  # calibration windows per forward pass


class Stop(Exception):
    """Raised from a hook to end a forward pass early."""


@dataclass
class BlockInput:
    """One calibration batch's inputs to the current block."""

    args: tuple
    kwargs: dict

    def hidden(self) -> Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, h: Tensor) -> BlockInput:
        if self.args:
            return BlockInput((h, *self.args[1:]), self.kwargs)
        return BlockInput(self.args, {**self.kwargs, "hidden_states": h})


def run_block(block: nn.Module, inp: BlockInput) -> Tensor:
    """The block's hidden-state output for one captured batch of its inputs."""
    out = block(*inp.args, **inp.kwargs)
    return out[0] if isinstance(out, tuple) else out


def capture_block_inputs(model: nn.Module, block: nn.Module, calib: Tensor, progress: bool) -> list[BlockInput]:
    """The inputs of ``block`` (hidden states and keyword arguments) for each batch of ``calib`` windows."""
    captured = []

    def pre_hook(mod, args, kwargs):
        captured.append(BlockInput(args, dict(kwargs)))
        raise Stop

    device = next(model.parameters()).device
    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for ids in track(calib.split(CALIB_BATCH), description="calibration", disable=not progress, transient=True):
            try:
                model(input_ids=ids.to(device), use_cache=False)
            except Stop:
                pass
    finally:
        handle.remove()
    return captured
