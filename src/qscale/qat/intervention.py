"""Teacher Intervention (Kim et al. 2023, arXiv 2302.11812, EACL): an option of any QAT recipe.

The full-precision teacher's layer-wise signals replace the student's propagated ones: each decoder block
``i >= first`` of the quantized student receives, instead of its own previous block's output, the teacher's
hidden state at the same place, so the quantization error of the earlier blocks does not reach it and each
block learns against clean inputs (the paper's intervention on the block input). The gradual schedule hands
the sub-sections back to the student: ``first`` moves from block 1 (every block intervened) to past the last
block over the first ``handback`` fraction of the steps (never the last step), one block at a time from the
bottom; after that the forward pass carries no teacher signal at all, and training ends as plain distillation.
The loss is the distillation loss to the teacher's logits (``qscale.qat.distill``), the paper's KD objective;
plain ``distill`` without intervention is the control. ``qscale.qat.finetune.qat_loss`` wires it in.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

from torch import Tensor, nn

from qscale.errors import require
from qscale.ptq.layers import find_blocks
from qscale.qat.config import InterventionConfig


def first_intervened(step: int, steps: int, n_blocks: int, cfg: InterventionConfig) -> int:
    """Index of the first block fed the teacher's input at ``step`` (``n_blocks`` = no intervention).

    The hand-back spans ``handback · steps`` steps but always ends before the last step, so the last
    step (at least) trains the student's own forward pass.
    """
    span = min(cfg.handback * steps, steps - 1)
    if n_blocks <= 1 or step >= span:
        return n_blocks
    return 1 + math.floor((n_blocks - 1) * step / span)


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def teacher_block_inputs(teacher: nn.Module):
    """Record the hidden state entering each teacher block during a forward (list, by block index)."""
    _, blocks = find_blocks(teacher)
    seen: list[Tensor | None] = [None] * len(blocks)

    def hook(i):
        def pre(mod, args, kwargs):
            seen[i] = _hidden(args, kwargs).detach()
        return pre

    handles = [b.register_forward_pre_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextmanager
def intervene(student: nn.Module, teacher_inputs: list[Tensor | None], first: int):
    """Within the context, student blocks ``i >= first`` take the teacher's input instead of their own."""
    _, blocks = find_blocks(student)
    require(len(blocks) == len(teacher_inputs), "teacher and student have different numbers of blocks")

    def hook(i):
        def pre(mod, args, kwargs):
            h = teacher_inputs[i]
            if args:
                return (h, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}
        return pre

    handles = [blocks[i].register_forward_pre_hook(hook(i), with_kwargs=True) for i in range(first, len(blocks))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
