"""``qat_finetune``: quantization-aware fine-tuning of a full-precision causal LM with one recipe.

AdamW (β = 0.9, 0.95), linear warm-up then cosine decay to 10 % of the peak rate, gradient clipping — the
optimizer protocol of Chen et al. 2025 (SPEC §2). With ``cfg.distill`` the loss is ``distill_loss`` to the
full-precision teacher (a frozen copy of the model taken before ``prepare`` unless one is given). A recipe's
``hooks`` (``qscale.qat.hooks``) make each step's gradients and act after it (SAM, extra loss terms, rank decay).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import track
from torch import Tensor, nn

from qscale.errors import QscaleError, require
from qscale.qat.config import QATRecipeConfig
from qscale.qat.distill import distill_loss
from qscale.qat.prepare import prepare, quant_layers
from qscale.qat.registry import get_recipe
from qscale.train.checkpoint import atomic_folder


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
    state_dir: Path | None = None,
    save_every: int = 50,
    fingerprint: str = "",
    progress: bool = False,
) -> list[float]:
    """Prepare ``model`` (in place) for ``cfg`` and train it ``steps`` steps on ``batches(step)``.

    batches(step) -> LongTensor ``[B, T+1]`` (e.g. ``qscale.data.batches.train_batch``). Returns the
    training loss of every step (the distillation loss when ``cfg.distill`` is set; the recipe's own loss for
    edgeqat and efficientdm). With ``state_dir``
    the weights, quantizer parameters, optimizer state and step are saved atomically every ``save_every``
    steps and a re-run resumes from them (batches are a function of the step, so the result is the same as
    an uninterrupted run); ``fingerprint`` (of model, data and config) must match the saved one.
    """
    require(steps >= 1, f"steps must be >= 1, got {steps}")
    require(lr > 0, f"learning rate must be positive, got {lr}")
    recipe = get_recipe(cfg.recipe)
    if (cfg.distill is not None or recipe.needs_teacher) and teacher is None:
        teacher = copy.deepcopy(model)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    if not quant_layers(model):  # a block-wise recipe (efficientqat) arrives prepared
        prepare(model, cfg)
    hooks = recipe.hooks(model, cfg, teacher)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    start, losses = _resume(state_dir, model, opt, fingerprint)

    def objective(batch: Tensor) -> Tensor:
        loss, logits = lm_loss(model, batch)
        if cfg.distill is None:
            return loss
        with torch.no_grad():
            teacher_logits = teacher(input_ids=batch[:, :-1]).logits
        return distill_loss(logits, teacher_logits, batch[:, 1:], cfg.distill)

    for step in track(range(start, steps), description="QAT", total=steps - start, disable=not progress):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss = hooks.backward(model, batches(step), objective, step, steps)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        hooks.after_step(model, opt, step, steps)
        losses.append(loss.item())
        require(math.isfinite(losses[-1]), f"QAT loss is not finite at step {step + 1}: lower --lr")
        if state_dir is not None and ((step + 1) % save_every == 0 or step + 1 == steps):
            _save(state_dir, model, opt, step + 1, losses, fingerprint)
    return losses


def _save(state_dir: Path, model: nn.Module, opt, step: int, losses: list[float], fingerprint: str) -> None:
    def write(tmp: Path) -> None:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "losses": losses,
                    "fingerprint": fingerprint}, tmp / "state.pt")

    atomic_folder(Path(state_dir), write)


def _resume(state_dir: Path | None, model: nn.Module, opt, fingerprint: str) -> tuple[int, list[float]]:
    """Step and losses of a saved state (loaded into ``model`` and ``opt``), or (0, [])."""
    if state_dir is None or not (Path(state_dir) / "state.pt").is_file():
        return 0, []
    try:
        state = torch.load(Path(state_dir) / "state.pt", weights_only=False)
    except Exception as e:
        raise QscaleError(f"cannot resume from {state_dir}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    require(state.get("fingerprint") == fingerprint,
            f"{state_dir} holds a QAT run with another model, data or config: remove it or use another --out")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return int(state["step"]), [float(x) for x in state["losses"]]
