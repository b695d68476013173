"""``qat_finetune``: quantization-aware fine-tuning of a full-precision causal LM with one recipe.

The steps are qscale's one training engine (``qscale.train.engine``): AdamW (β = 0.9, 0.95), no weight
decay on norms, biases or quantizer parameters, linear warm-up then cosine decay to 10 % of the peak rate,
gradient clipping -- the optimizer protocol of Chen et al. 2025 (SPEC §2). With ``cfg.distill`` the loss is
``distill_loss`` to the full-precision teacher (a frozen copy of the model taken before ``prepare`` unless
one is given). With ``cfg.intervention`` (Teacher Intervention, Kim et al. 2023, arXiv 2302.11812) the
teacher's self-attention output, context or attention map replaces the student's inside every layer while
the schedule intervenes, and the loss is TernaryBERT's distillation loss (``qscale.qat.intervention``).
A recipe's ``hooks`` (``qscale.qat.hooks``) make each step's gradients and act after it (SAM, extra
loss terms, rank decay).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from rich.progress import Progress
from torch import Tensor, nn

from qscale.errors import QscaleError, require
from qscale.qat.config import DistillConfig, QATRecipeConfig
from qscale.qat.distill import distill_loss
from qscale.qat.intervention import phase_at, signals, ti_loss
from qscale.qat.prepare import prepare, quant_layers
from qscale.qat.registry import get_recipe
from qscale.train.checkpoint import atomic_folder, load_state_file
from qscale.train.engine import LossFn, OptimConfig, lm_loss, logits_of, make_optimizer, train_steps


def qat_loss(cfg: QATRecipeConfig, teacher: nn.Module | None, steps: int) -> LossFn:
    """The loss of step ``step`` as a closure ``(model, batch, step) -> loss``.

    Plain next-token CE without ``cfg.distill`` and ``cfg.intervention``; the distillation loss to the
    teacher's logits with ``cfg.distill``; under intervention the teacher's forward records its signals, the
    student's forward takes the ones of ``phase_at(step, ...)`` (none in the plain-QAT steps) and the loss is
    ``ti_loss`` (logits, hidden states, attention scores and attention outputs).
    """
    if cfg.distill is None and cfg.intervention is None:
        return lambda model, batch, step: lm_loss(model, batch)[0]
    require(teacher is not None, "distillation and Teacher Intervention need a teacher model")
    dcfg = cfg.distill or DistillConfig()

    def loss(model: nn.Module, batch: Tensor, step: int) -> Tensor:
        ids = batch[:, :-1]
        if cfg.intervention is None:
            with torch.no_grad():
                t_logits = logits_of(teacher, ids)
            return distill_loss(logits_of(model, ids), t_logits, batch[:, 1:], dcfg)
        with torch.no_grad(), signals(teacher) as t_sig:
            t_logits = logits_of(teacher, ids)
        with signals(model, phase_at(step, steps, cfg.intervention), t_sig) as s_sig:
            s_logits = logits_of(model, ids)
        return ti_loss(s_sig, t_sig, s_logits, t_logits)

    return loss


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
    training loss of every step (the distillation loss with ``cfg.distill``, TernaryBERT's with
    ``cfg.intervention``; the recipe's own loss for edgeqat and efficientdm).
    With ``state_dir`` the weights, quantizer parameters, optimizer state and step are saved atomically
    every ``save_every`` steps and a re-run resumes from them (batches are a function of the step, so the
    result is the same as an uninterrupted run); ``fingerprint`` (of model, data and config) must match
    the saved one.
    """
    require(steps >= 1, f"steps must be >= 1, got {steps}")
    require(save_every >= 1, f"save_every must be >= 1, got {save_every}")
    optim = OptimConfig(lr=lr, warmup=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip)
    recipe = get_recipe(cfg.recipe)
    if (cfg.distill is not None or cfg.intervention is not None or recipe.needs_teacher) and teacher is None:
        teacher = copy.deepcopy(model)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    if not quant_layers(model):  # a block-wise recipe (efficientqat) arrives prepared
        prepare(model, cfg)
    hooks = recipe.hooks(model, cfg, teacher)
    opt = make_optimizer(model, optim)
    start, losses = _resume(state_dir, model, opt, fingerprint)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("QAT", total=steps, completed=start)

        def on_step(done: int, loss: float, lr_now: float) -> None:
            losses.append(loss)
            bar.update(task, completed=done)
            if state_dir is not None and (done % save_every == 0 or done == steps):
                _save(state_dir, model, opt, done, losses, fingerprint)

        train_steps(
            model,
            batches,
            optim,
            steps,
            opt=opt,
            loss_fn=qat_loss(cfg, teacher, steps),
            start=start,
            on_step=on_step,
            hooks=hooks,
        )
    return losses


def _save(state_dir: Path, model: nn.Module, opt, step: int, losses: list[float], fingerprint: str) -> None:
    def write(tmp: Path) -> None:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "losses": losses,
                "fingerprint": fingerprint,
            },
            tmp / "state.pt",
        )

    atomic_folder(Path(state_dir), write)


def _resume(state_dir: Path | None, model: nn.Module, opt, fingerprint: str) -> tuple[int, list[float]]:
    """Step and losses of a saved state (loaded into ``model`` and ``opt``), or (0, [])."""
    if state_dir is None or not (Path(state_dir) / "state.pt").is_file():
        return 0, []
    try:
        state = load_state_file(Path(state_dir) / "state.pt")  # data only: a crafted pickle is refused
    except QscaleError:
        raise
    except Exception as e:
        raise QscaleError(
            f"cannot resume from {state_dir}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    require(
        state.get("fingerprint") == fingerprint,
        f"{state_dir} holds a QAT run with another model, data or config: remove it or use another --out",
    )
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise QscaleError(f"cannot resume from {state_dir} (saved by another qscale version?): remove it") from e
    return int(state["step"]), [float(x) for x in state["losses"]]
