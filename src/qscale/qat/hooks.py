"""Training hooks a recipe may give ``qat_finetune``: how one step's gradients are made, and what follows a step.

The default is the plain step (one forward, one backward of the objective). Recipes with their own
training procedure override it: GAQAT (sharpness-aware minimisation, two passes), EdgeQAT (entropy and
distribution terms on the attention), QVGen (rank decay of the auxiliary branches after each step) and
EfficientDM (scale-aware LoRA gradients). The objective itself (cross-entropy or distillation) is handed in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Objective = Callable[[Tensor], Tensor]  # batch [B, T+1] -> scalar training loss of the current model


class TrainHooks:
    """The plain step. ``backward`` leaves the gradients in ``.grad`` and returns the loss it reports."""

    def backward(self, model: nn.Module, batch: Tensor, objective: Objective, step: int, steps: int) -> Tensor:
        loss = objective(batch)
        loss.backward()
        return loss.detach()

    def after_step(self, model: nn.Module, opt: torch.optim.Optimizer, step: int, steps: int) -> None:
        """Called after the optimizer step ``step`` (0-based) of ``steps``."""
