"""Training hooks a recipe may give ``qat_finetune``: how one step's gradients are made, and what follows a step.

The default is the engine's plain step (``qscale.train.engine.StepHooks``: one forward, one backward of the
objective). Recipes with their own training procedure subclass it: GAQAT (sharpness-aware minimisation, two
passes), EdgeQAT (entropy and distribution terms on the attention), QVGen (rank decay of the auxiliary
branches after each step) and EfficientDM (scale-aware LoRA gradients). The objective itself (cross-entropy,
distillation or Teacher Intervention) is handed in by the engine.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from qscale.train.engine import StepHooks as TrainHooks

Objective = Callable[[Tensor], Tensor]  # batch [B, T+1] -> scalar training loss of the current model

__all__ = ["Objective", "TrainHooks"]
