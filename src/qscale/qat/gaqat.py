"""``gaqat``: GAQAT — sharpness-aware QAT with selective freezing of the quantizer scales (Jiang et al. 2024,
"GAQAT: gradient-adaptive quantization-aware training for domain generalization", arXiv 2412.05551; SPEC §6).

Quantizers: LSQ's (learned weight and activation step sizes, ``qscale.qat.lsq``). Each step is a SAM step
(Foret et al. 2021, "Sharpness-aware minimization", eq. 2-3): the gradient ``g`` of the task loss ``L(w)``,
then the gradient ``g_sam`` of ``L(w + ε)`` at ``ε = ρ·g/‖g‖`` (every trainable parameter perturbed, then
restored bit for bit), and the update uses ``g_sam``. ``L(w + ε) = L(w) + [L(w + ε) − L(w)]`` splits the SAM
loss into the task loss and the sharpness (smoothness) loss, whose gradient is ``g_sam − g``.

The paper's finding (abstract): "the task loss and smoothness loss induce conflicting gradients for the scaling
factors of quantizers, with certain layers exhibiting opposing gradient directions"; it quantifies the
inconsistency by a "gradient disorder" measure and "selectively freeze[s] the gradients of scaling factors".
The paper's own formula could not be read here (only the abstract and the ICLR 2025 OpenReview reviews are
reachable, and no code by the authors was found). From the reviews: gradient disorder counts "the number of
direction flips of gradient [...] over n training steps", formulated "as the discrepancy between two gradient
sequences" (its Eq. 2/4); it is computed "every K steps", and where it is "below a threshold" τ the task-loss
gradient of the scaling factors is frozen, "continuously [...] without unfreezing". Without the equations, the
window, K, τ and the exact update rule cannot be reproduced, so what is implemented instead is the measure of
"opposing gradient directions" the abstract names, per step: per layer (the concatenated step/offset
parameters of its quantizers) ``cos(g_task, g_sharp)``; a layer whose cosine is below ``conflict_threshold``
(default 0: opposing directions) is frozen for the step. Freezing is real freezing under AdamW: the frozen
parameters' ``.grad`` is set to ``None``, so ``torch.optim.AdamW`` skips them entirely — they do not move, get
no weight decay, and their ``exp_avg``, ``exp_avg_sq`` and ``step`` do not advance (zeroing ``.grad`` instead
would let the momentum keep moving them). Under gradient accumulation each micro-batch decides for itself, so a layer
frozen in one micro-batch still takes the other micro-batches' gradients. ``frozen`` holds the layers frozen at the last
(micro-)step, ``freeze_counts`` how often each was frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qscale.errors import require
from qscale.qat.hooks import Objective, TrainHooks
from qscale.qat.lsq import LSQRecipe
from qscale.qat.prepare import quant_layers
from qscale.qat.registry import register

SCALE_NAMES = ("step", "offset")  # the quantizer-scale parameters of a layer (LSQ step, LSQ+ offset)


@dataclass(frozen=True)
class GAQATOptions:
    """rho: SAM neighbourhood radius ρ; conflict_threshold: freeze a layer's scales when cos < this."""

    rho: float = 0.05
    conflict_threshold: float = 0.0

    def __post_init__(self) -> None:
        require(self.rho > 0, f"gaqat rho must be positive, got {self.rho}")
        require(
            -1.0 <= self.conflict_threshold <= 1.0,
            f"gaqat conflict_threshold must be in [-1, 1], got {self.conflict_threshold}",
        )


def scale_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable quantizer-scale parameters of each ``QuantLinear`` by layer name."""
    out = {}
    for name, layer in quant_layers(model).items():
        ps = [
            p
            for q in (layer.weight_quantizer, layer.act_quantizer)
            if q is not None
            for n, p in q.named_parameters()
            if n.split(".")[-1] in SCALE_NAMES and p.requires_grad
        ]
        if ps:
            out[name] = ps
    return out


def _flat(grads: list[Tensor]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def conflict_cosines(task: dict[str, list[Tensor]], sharp: dict[str, list[Tensor]]) -> dict[str, float]:
    """Per layer ``cos(g_task, g_sharp)`` over its scale gradients (0 where either is all zero)."""
    out = {}
    for name, grads in task.items():
        a, b = _flat(grads).double(), _flat(sharp[name]).double()
        den = a.norm() * b.norm()
        out[name] = float(a @ b / den) if den > 0 else 0.0
    return out


class GAQATHooks(TrainHooks):
    def __init__(self, model: nn.Module, opts: GAQATOptions):
        self.opts = opts
        self.scales = scale_params(model)
        self.frozen: set[str] = set()
        self.cosines: dict[str, float] = {}
        self.freeze_counts = dict.fromkeys(self.scales, 0)

    def backward(self, model: nn.Module, batch: Tensor, objective: Objective, step: int, steps: int) -> Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        loss = objective(batch)
        loss.backward()
        g = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        task = {
            n: [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in ps]
            for n, ps in self.scales.items()
        }
        norm = torch.sqrt(sum((gi.float() ** 2).sum() for gi in g))
        eps = [self.opts.rho * gi / (norm + 1e-12) for gi in g]
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        for p in params:
            p.grad = None
        objective(batch).backward()
        with torch.no_grad():
            for p, w in zip(
                params, saved, strict=True
            ):  # restore exactly: (w + ε) − ε can differ from w in the last bit
                p.copy_(w)
        sharp = {
            n: [(p.grad if p.grad is not None else torch.zeros_like(p)) - t for p, t in zip(ps, task[n], strict=True)]
            for n, ps in self.scales.items()
        }
        self.cosines = conflict_cosines(task, sharp)
        self.frozen = {n for n, c in self.cosines.items() if c < self.opts.conflict_threshold}
        for n in self.frozen:
            self.freeze_counts[n] += 1
            for p in self.scales[n]:
                p.grad = None  # AdamW skips a parameter without a gradient: no move, no state update
        return loss.detach()


@register
class GAQATRecipe(LSQRecipe):
    name = "gaqat"
    options_type = GAQATOptions

    def hooks(self, model, cfg, teacher):
        return GAQATHooks(model, cfg.options)
