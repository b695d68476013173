"""``efficientqat``: EfficientQAT (Chen et al. 2024, arXiv 2407.11062): Block-AP, then E2E-QP.

Quantizer (the paper's, the authors' ``quantize/quantizer.py``): asymmetric uniform per group,
``Ŵ = (clamp(⌊W/s⌉ + clamp(⌊z⌉, 0, 2^b − 1), 0, 2^b − 1) − clamp(⌊z⌉, 0, 2^b − 1))·s`` with ``s`` clamped to
[1e-4, 1e4]; straight-through rounding, and straight-through clamps of ``s`` and ``⌊z⌉`` (the authors'
``clamp_ste``); trainable ``W``, ``s`` and ``z``, initialised to min-max RTN (the shared core's asymmetric grid).
The frozen form is an asymmetric ``QuantizedWeight`` with integer zero points, so it exports to
compressed-tensors and GPTQ.

- **Block-AP** (:func:`block_ap`): for each decoder block in turn, its linear layers are prepared and *every
  weight of the block* — the linear weights and the RMSNorm weights (the authors' ``weight_parameters``: every
  parameter named ``weight``; biases stay fixed) — plus ``s`` and ``z`` are trained with AdamW (no weight decay)
  to reproduce the full-precision block's outputs (MSE) on calibration batches, the quantized block's inputs
  being the outputs of the already-trained quantized blocks before it. Rates: ``s``/``z`` 1e-4, weights 2e-5
  (the authors' ``examples/block_ap/Llama-2-7b/w2g64.sh``), each on its own cosine schedule over the block's
  iterations down to ``lr / 20`` (``CosineAnnealingLR(T_max = iterations, eta_min = lr/min_lr_factor)``,
  ``min_lr_factor`` 20). The authors run 2 epochs of 4096 windows at batch 2 (4096 iterations per block);
  ``steps`` is that iteration count here. Deliberate differences: the rate of iteration ``i`` is the declared
  cosine's value at ``i`` (the authors' loop reads it with ``get_lr()`` after ``scheduler.step()``, which
  returns a slightly different, recursive value); fp32 on CPU instead of fp16 AMP; no validation split.
- **E2E-QP** (:func:`freeze_codes`): the integer codes (and zero points) are frozen, only the step sizes ``s``
  train end to end on the language-model loss (``qat_finetune`` on the prepared model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from rich.progress import track
from torch import Tensor, nn

from qscale.errors import require
from qscale.ptq.layers import find_blocks
from qscale.ptq.sequential import capture_block_inputs, run_block
from qscale.qat.config import QATRecipeConfig
from qscale.qat.linear import QuantLinear, WeightQuantizer
from qscale.qat.prepare import plan_layers, prepare_layers
from qscale.qat.registry import Recipe, register
from qscale.qat.ste import round_ste, weight_spec
from qscale.quant import (
    QTensor,
    QuantizedWeight,
    QuantSpec,
    compute_qparams,
    grouped,
    require_finite,
    ungrouped,
)

SCALE_MIN, SCALE_MAX = 1e-4, 1e4  # the authors' clamp of the step size


def _clamp_ste(x: Tensor, lo: float, hi: float) -> Tensor:
    """``clamp`` in the forward, identity in the backward (the authors' ``clamp_ste``)."""
    return x + (x.clamp(lo, hi) - x).detach()


def _asym(bits: int, group_size: int | None) -> QuantSpec:
    spec = weight_spec(bits, group_size)
    return QuantSpec(bits, False, spec.granularity, spec.group_size)


class AsymWeightQuantizer(WeightQuantizer):
    """Block-AP's quantizer: trainable per-group step ``s`` and zero ``z`` on the asymmetric grid."""

    def __init__(self, weight: Tensor, spec: QuantSpec):
        super().__init__()
        require_finite(weight, "a weight")
        self.spec = spec
        with torch.no_grad():
            s, z = compute_qparams(weight.detach(), spec)
        self.scale = nn.Parameter(s.clamp(SCALE_MIN, SCALE_MAX))
        self.zero = nn.Parameter(z.clone())

    def _codes(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s = _clamp_ste(self.scale, SCALE_MIN, SCALE_MAX)
        z = _clamp_ste(round_ste(self.zero), 0, self.spec.qmax)
        q = torch.clamp(round_ste(grouped(w.float(), self.spec) / s) + z, 0, self.spec.qmax)
        return q, z, s

    def forward(self, w: Tensor) -> Tensor:
        q, z, s = self._codes(w)
        return ungrouped((q - z) * s, self.spec, w.shape).to(w.dtype)

    @torch.no_grad()
    def freeze(self, w: Tensor) -> QuantizedWeight:
        q, z, s = self._codes(w)
        codes = ungrouped(q, self.spec, w.shape).to(torch.uint8)
        return QuantizedWeight.from_qtensor(QTensor(codes, s.float(), z, self.spec, w.shape))


class FrozenCodesQuantizer(WeightQuantizer):
    """E2E-QP: integer codes and zero points fixed, only the step sizes ``s`` train (``Ŵ = (q − z)·s``)."""

    owns_weight = True

    def __init__(self, frozen: QuantizedWeight):
        super().__init__()
        self.spec = frozen.spec
        self.register_buffer("codes", frozen.codes.clone())
        self.register_buffer("zero_point", frozen.zero.clone())
        self.register_buffer("g_idx", frozen.g_idx.clone())
        self.scale = nn.Parameter(frozen.scale.clone())

    def forward(self, w: Tensor | None) -> Tensor:
        g = self.g_idx.long()
        return (self.codes.float() - self.zero_point[:, g]) * self.scale[:, g]

    @torch.no_grad()
    def freeze(self, w: Tensor | None) -> QuantizedWeight:
        return QuantizedWeight(self.codes, self.scale.detach().clone(), self.zero_point, self.g_idx, self.spec)


@register
class EfficientQATRecipe(Recipe):
    name = "efficientqat"
    default_bits = (4, 16)

    def check_bits(self, w_bits: int, a_bits: int) -> None:
        require(w_bits == 16 or 2 <= w_bits <= 8, f"efficientqat quantizes weights to 2..8 bits, got {w_bits}")
        require(a_bits == 16, f"efficientqat is weight-only (a_bits 16), got a_bits {a_bits}")

    def weight_quantizer(self, weight, bits, cfg):
        return AsymWeightQuantizer(weight, _asym(bits, cfg.group_size))

    def act_quantizer(self, in_features, bits, cfg):
        raise NotImplementedError


def cosine_lr(lr: float, step: int, steps: int, min_lr_factor: float) -> float:
    """``CosineAnnealingLR(T_max=steps, eta_min=lr/min_lr_factor)`` at iteration ``step`` (closed form)."""
    low = lr / min_lr_factor
    return low + (lr - low) * (1 + math.cos(math.pi * step / steps)) / 2


def block_trainables(block: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights, quantizer parameters) Block-AP trains in ``block``: every parameter named ``weight`` (linear and
    norm weights; not biases), and every weight quantizer's ``s`` and ``z``."""
    quant = [
        p
        for m in block.modules()
        if isinstance(m, QuantLinear) and m.weight_quantizer is not None
        for p in m.weight_quantizer.parameters()
    ]
    taken = {id(p) for p in quant}
    weights = [p for n, p in block.named_parameters() if n.rsplit(".", 1)[-1] == "weight" and id(p) not in taken]
    return weights, quant


def block_ap(
    model: nn.Module,
    cfg: QATRecipeConfig,
    calib: Tensor,
    steps: int = 50,
    lr_weight: float = 2e-5,
    lr_quant: float = 1e-4,
    min_lr_factor: float = 20.0,
    progress: bool = False,
) -> list[float]:
    """Block-AP over every decoder block (in place: the block's planned layers become ``QuantLinear``).

    ``steps``: AdamW iterations per block, cycling over the calibration batches, with each group's rate on its
    own cosine (:func:`cosine_lr`). Returns each block's final reconstruction MSE. ``calib``: token windows
    ``[n, T]`` from the train split.
    """
    require(cfg.recipe == "efficientqat", f"block_ap runs the efficientqat recipe, not {cfg.recipe!r}")
    require(
        steps >= 1 and min_lr_factor >= 1,
        f"block_ap needs steps >= 1 and min_lr_factor >= 1, got {steps}, {min_lr_factor}",
    )
    plans = plan_layers(model, cfg)
    blocks_name, blocks = find_blocks(model)
    model.eval()
    with torch.no_grad():
        q_inputs = capture_block_inputs(model, blocks[0], calib, progress=False)
    fp_inputs = list(q_inputs)
    losses = []
    for b, block in track(list(enumerate(blocks)), description="Block-AP", disable=not progress, transient=True):
        with torch.no_grad():
            targets = [run_block(block, inp) for inp in fp_inputs]
        prefix = f"{blocks_name}.{b}."
        prepare_layers(model, cfg, {n: p for n, p in plans.items() if n.startswith(prefix)})
        weights, quant = block_trainables(block)
        for p in weights + quant:
            p.requires_grad_(True)
        groups = [
            {"params": quant, "lr": lr_quant, "base_lr": lr_quant},
            {"params": weights, "lr": lr_weight, "base_lr": lr_weight},
        ]
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(g["base_lr"], step, steps, min_lr_factor)
            i = step % len(q_inputs)
            loss = F.mse_loss(run_block(block, q_inputs[i]).float(), targets[i].float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            outs = [run_block(block, inp) for inp in q_inputs]
            losses.append(
                float(sum(F.mse_loss(o.float(), t.float()) for o, t in zip(outs, targets, strict=True)) / len(outs))
            )
        q_inputs = [inp.with_hidden(o) for inp, o in zip(q_inputs, outs, strict=True)]
        fp_inputs = [inp.with_hidden(t) for inp, t in zip(fp_inputs, targets, strict=True)]
    return losses


@torch.no_grad()
def freeze_codes(model: nn.Module) -> None:
    """Start of E2E-QP: every Block-AP layer keeps its integer codes; only its step sizes stay trainable."""
    model.requires_grad_(False)
    for layer in model.modules():
        if isinstance(layer, QuantLinear) and isinstance(layer.weight_quantizer, AsymWeightQuantizer):
            layer.weight_quantizer = FrozenCodesQuantizer(layer.weight_quantizer.freeze(layer.weight))
            layer.weight = None
