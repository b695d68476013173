"""The one training engine: optimizer and weight-decay policy, schedule, device/autocast, the step loop.

Used by suite training (``qscale.train.loop``), ``qscale qat`` fine-tuning (``qscale.qat.finetune``) and
the QAT study, so every model qscale trains gets the same AdamW, the same schedule
(``qscale.train.schedule``) and the same clipping:

* AdamW with ``betas`` (default 0.9, 0.95: Chen et al. 2025 / SPEC §2), weight decay on weight matrices
  only -- never on norms, biases (1-D) or quantizer parameters (step sizes, scales, offsets and low-rank
  factors of a QAT quantizer: every parameter inside a module whose class sets ``no_weight_decay = True``,
  as ``qscale.qat``'s weight and activation quantizers do). The engine sits below ``qscale.qat`` and knows
  quantizers only by that marker. A module may also give some of its parameters their own learning rate,
  a fixed multiple of the schedule's (``param_lr_scales``, e.g. LR-QAT's scales).
* bf16 autocast on CUDA, plain fp32 on CPU; the loss is computed in fp32.
* Deterministic on CPU: the LR is a pure function of the step and batches a function of the step, so the
  same seed gives the same weights bit for bit, and a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qscale.errors import QscaleError, require
from qscale.train.distributed import Dist, local_slice, mean_over_ranks, wrap
from qscale.train.schedule import SCHEDULES, lr_factor

NO_DECAY_ATTR = "no_weight_decay"
LR_SCALES_ATTR = "param_lr_scales"  # module attribute {parameter name: factor of the schedule's LR}

LossFn = Callable[[nn.Module, Tensor, int], Tensor]  # (model, batch [B, T+1], step) -> scalar loss


@dataclass(frozen=True)
class OptimConfig:
    """Peak LR, schedule (warmup then ``schedule`` down to ``min_lr_ratio · lr``), AdamW and clipping."""

    lr: float
    min_lr_ratio: float = 0.1
    warmup: int = 0
    schedule: str = "cosine"  # "cosine" | "wsd"
    decay_frac: float = 0.2  # wsd only: fraction of the steps in the final decay
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # 0 = no clipping
    embed_lr: float | None = None  # peak LR of the token embedding and LM head (None: lr)

    def __post_init__(self) -> None:
        require(math.isfinite(self.lr) and self.lr > 0, f"learning rate must be > 0, got {self.lr}")
        require(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        require(self.warmup >= 0, f"warmup steps must be >= 0, got {self.warmup}")
        require(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r} (choose from {', '.join(SCHEDULES)})")
        require(0 < self.decay_frac <= 1, f"decay_frac must be in (0, 1], got {self.decay_frac}")
        require(self.weight_decay >= 0 and self.grad_clip >= 0, "weight decay and grad clip must be >= 0")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be in [0, 1), got {self.betas}"
        )
        require(
            self.embed_lr is None or (math.isfinite(self.embed_lr) and self.embed_lr > 0),
            f"embedding learning rate must be > 0, got {self.embed_lr}",
        )

    def lr_at(self, step: int, total: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based) of ``total``."""
        return self.lr * lr_factor(self.schedule, step, total, self.warmup, self.min_lr_ratio, self.decay_frac)


def device_for(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` is refused without CUDA."""
    require(name in ("auto", "cpu", "cuda"), f"unknown device {name!r} (auto, cpu or cuda)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    require(name != "cuda" or torch.cuda.is_available(), "device 'cuda' requested but CUDA is not available")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA, plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def logits_of(model: nn.Module, ids: Tensor) -> Tensor:
    """Logits ``[B, T, V]`` of ``ids [B, T]`` under the device's autocast."""
    with autocast(ids.device):
        return model(input_ids=ids, use_cache=False).logits


def lm_loss(model: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy (nats/token, fp32) of ``batch [B, T+1]`` and the logits ``[B, T, V]``."""
    logits = logits_of(model, batch[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten()), logits


class StepHooks:
    """How one step's gradients are made and what follows the optimiser step; the default is the plain step.

    ``backward(model, batch, objective, step, total)`` leaves the gradients in ``.grad`` and returns the
    (detached) loss it reports; ``objective(batch)`` is the step's training loss. Under gradient accumulation
    it sees one micro-batch on cleared gradients and the engine weights and sums them (:func:`accumulate`).
    Recipes with their own procedure (``qscale.qat.hooks``: SAM, attention terms, rank decay) subclass it.
    """

    def backward(
        self, model: nn.Module, batch: Tensor, objective: Callable[[Tensor], Tensor], step: int, total: int
    ) -> Tensor:
        loss = objective(batch)
        loss.backward()
        return loss.detach()

    def after_step(self, model: nn.Module, opt: torch.optim.Optimizer, step: int, total: int) -> None:
        """Called after the optimiser step ``step`` (0-based) of ``total``."""


def _at_step(loss_fn: LossFn, forward: nn.Module, step: int) -> Callable[[Tensor], Tensor]:
    """``loss_fn`` at ``step`` as a function of the batch alone (``step`` bound here, not read from the loop)."""
    return lambda b: loss_fn(forward, b, step)


def accumulate(params: list[nn.Parameter], backward: Callable[[], Tensor], weight: float) -> float:
    """One micro-batch of gradient accumulation: ``backward()`` runs on cleared gradients (so recipe hooks
    with extra loss terms or several passes, e.g. SAM, see only this micro-batch), then ``weight`` times its
    gradients is added to the earlier micro-batches'; returns ``weight`` times its loss. With one micro-batch
    (``weight`` 1) the gradients are left as computed."""
    earlier = [p.grad for p in params]
    for p in params:
        p.grad = None
    loss = backward()
    for p, g in zip(params, earlier, strict=True):
        if p.grad is not None and weight != 1:
            p.grad.mul_(weight)
        if g is not None:
            p.grad = g if p.grad is None else g.add_(p.grad)
    return loss.item() * weight


def _plain_loss(model: nn.Module, batch: Tensor, step: int) -> Tensor:
    return lm_loss(model, batch)[0]


def _no_decay_ids(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if getattr(m, NO_DECAY_ATTR, False) for p in m.parameters()}


def decay_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed) trainable parameters in model order: matrices vs 1-D and quantizer parameters."""
    skip = _no_decay_ids(model)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2 and id(p) not in skip]
    taken = {id(p) for p in decay}
    return decay, [p for p in params if id(p) not in taken]


def _embedding_ids(model: nn.Module) -> set[int]:
    """Parameters of the token embedding and the LM head (a Hugging Face model's input/output embeddings)."""
    names = ("get_input_embeddings", "get_output_embeddings")
    mods = [getattr(model, name)() for name in names if hasattr(model, name)]
    return {id(p) for m in mods if m is not None for p in m.parameters()}


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, weight decay per :func:`decay_groups` (fused on CUDA).

    With ``cfg.embed_lr`` the token embedding and LM head form their own group whose LR is ``embed_lr / lr``
    times the schedule's (its ``lr_scale``): width-scaled learning rates keep the hidden matrices' LR
    falling with width while the embeddings learn at one rate at every size (Yang et al. 2021, muP).
    Parameters a module lists in ``param_lr_scales`` get groups of their own (:func:`_own_lr_groups`).
    """
    decay, rest = decay_groups(model)
    require(decay or rest, "the model has no trainable parameters")
    device = (decay or rest)[0].device
    embed = _embedding_ids(model) if cfg.embed_lr is not None else set()
    groups = [
        {"params": [p for p in decay if id(p) not in embed], "weight_decay": cfg.weight_decay},
        {"params": [p for p in rest if id(p) not in embed], "weight_decay": 0.0},
    ]
    if embed:
        scale = cfg.embed_lr / cfg.lr
        extra = [
            {"params": [p for p in decay if id(p) in embed], "weight_decay": cfg.weight_decay, "lr_scale": scale},
            {"params": [p for p in rest if id(p) in embed], "weight_decay": 0.0, "lr_scale": scale},
        ]
        groups += [g for g in extra if g["params"]]
    groups += _own_lr_groups(model, groups)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda")


def _own_lr_groups(model: nn.Module, groups: list[dict]) -> list[dict]:
    """Move the parameters a module names in ``param_lr_scales`` out of ``groups`` (in place) into groups of their
    own whose ``lr_scale`` is the group's times the module's factor; the new groups (appended, so the order of
    the groups is unchanged for models without such parameters)."""
    factor = {
        id(getattr(m, name)): f
        for m in model.modules()
        for name, f in getattr(m, LR_SCALES_ATTR, {}).items()
        if getattr(m, name, None) is not None
    }
    extra: list[dict] = []
    for g in list(groups):
        own = [p for p in g["params"] if id(p) in factor]
        if not own:
            continue
        g["params"] = [p for p in g["params"] if id(p) not in factor]
        for f in sorted({factor[id(p)] for p in own}):
            extra.append(
                {**g, "params": [p for p in own if factor[id(p)] == f], "lr_scale": g.get("lr_scale", 1.0) * f}
            )
    return extra


def train_steps(
    model: nn.Module,
    batches: Callable[[int], Tensor],
    cfg: OptimConfig,
    total: int,
    *,
    opt: torch.optim.Optimizer | None = None,
    loss_fn: LossFn = _plain_loss,
    start: int = 0,
    end: int | None = None,
    grad_accum: int = 1,
    compile: bool = False,
    on_step: Callable[[int, float, float], None] | None = None,
    hooks: StepHooks | None = None,
    parallel: Dist = Dist(),
) -> list[float]:
    """Optimiser steps ``start .. end-1`` of a ``total``-step schedule; returns each step's loss.

    batches(step) -> LongTensor ``[B, T+1]`` (moved to the model's device), split into ``grad_accum``
    micro-batches; ``loss_fn(model, micro_batch, step)`` gives the loss to minimise (default: next-token
    CE), so step-dependent losses (Teacher Intervention) are closures. ``on_step(done, loss, lr)`` runs
    after each step (checkpoints, resume state, progress); the model is back in train mode afterwards.
    ``hooks`` (a recipe's :class:`StepHooks`) may make the gradients their own way (SAM's two passes, extra
    loss terms) and act after each optimiser step (rank decay). A non-finite loss is an error. ``parallel``
    (a torchrun rank, :mod:`qscale.train.distributed`): each process runs its slice of every batch through
    DDP, and the losses are the means over all processes.
    """
    hooks = StepHooks() if hooks is None else hooks
    require(total >= 1, f"steps must be >= 1, got {total}")
    end = total if end is None else min(total, end)
    opt = make_optimizer(model, cfg) if opt is None else opt
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device if params else torch.device("cpu")
    forward = wrap(model, parallel, device)
    forward = torch.compile(forward) if compile else forward
    losses = []
    opt.zero_grad(set_to_none=True)
    for step in range(start, end):
        model.train()
        lr = cfg.lr_at(step, total)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        batch = local_slice(batches(step), parallel).to(device)
        require(
            batch.shape[0] % grad_accum == 0,
            f"batch of {batch.shape[0]} sequences is not divisible by grad accumulation {grad_accum}",
        )
        loss_sum = 0.0
        objective = _at_step(loss_fn, forward, step)
        for chunk in batch.split(batch.shape[0] // grad_accum):
            backward = partial(hooks.backward, model, chunk, objective, step, total)
            loss_sum += accumulate(params, backward, 1 / grad_accum)
        loss_sum = mean_over_ranks(loss_sum, parallel, device)
        if not math.isfinite(loss_sum):
            raise QscaleError(f"training loss is not finite at step {step + 1}: lower the learning rate")
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        hooks.after_step(model, opt, step, total)
        opt.zero_grad(set_to_none=True)
        losses.append(loss_sum)
        if on_step is not None:
            on_step(step + 1, loss_sum, lr)
    model.train()
    return losses


def train_model(
    model: nn.Module,
    cfg: OptimConfig,
    batches: Callable[[int], Tensor],
    steps: int,
    loss_fn: LossFn = _plain_loss,
    hooks: StepHooks | None = None,
) -> list[float]:
    """Train ``model`` in place for ``steps`` steps from a fresh optimizer, leave it in eval mode; the step losses."""
    losses = train_steps(model, batches, cfg, steps, loss_fn=loss_fn, hooks=hooks)
    model.eval()
    return losses
