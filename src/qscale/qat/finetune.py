"""``qat_finetune``: quantization-aware fine-tuning of a full-precision causal LM with one recipe.

AdamW (β = 0.9, 0.95), linear warm-up then cosine decay to 10 % of the peak rate, gradient clipping — the
optimizer protocol of Chen et al. 2025 (SPEC §2). With ``cfg.distill`` the loss is ``distill_loss`` to the
full-precision teacher (a frozen copy of the model taken before ``prepare`` unless one is given).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qscale.errors import require
from qscale.qat.config import QATRecipeConfig
from qscale.qat.distill import distill_loss
from qscale.qat.prepare import prepare


def lm_loss(model: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy (nats/token) of ``batch [B, T+1]`` and the logits ``[B, T, V]``."""
    logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten()), logits


def cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``peak`` to ``peak/10``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def qat_finetune(
    model: nn.Module,
    cfg: QATRecipeConfig,
    batches: Callable[[int], Tensor],
    steps: int,
    lr: float,
    teacher: nn.Module | None = None,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    grad_clip: float = 1.0,
) -> list[float]:
    """Prepare ``model`` (in place) for ``cfg`` and train it ``steps`` steps on ``batches(step)``.

    batches(step) -> LongTensor ``[B, T+1]`` (e.g. ``qscale.data.batches.train_batch``). Returns the
    training loss of every step (the distillation loss when ``cfg.distill`` is set).
    """
    require(steps >= 1, f"steps must be >= 1, got {steps}")
    require(lr > 0, f"learning rate must be positive, got {lr}")
    if cfg.distill is not None and teacher is None:
        teacher = copy.deepcopy(model)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    prepare(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup_steps)
        batch = batches(step)
        loss, logits = lm_loss(model, batch)
        if cfg.distill is not None:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=batch[:, :-1]).logits
            loss = distill_loss(logits, teacher_logits, batch[:, 1:], cfg.distill)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        losses.append(loss.item())
    return losses
