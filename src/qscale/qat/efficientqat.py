"""``efficientqat``: EfficientQAT (Chen et al. 2024, arXiv 2407.11062): Block-AP, then E2E-QP.

Quantizer (the paper's): asymmetric uniform per group, ``Ŵ = (clamp(⌊W/s⌉ + ⌊z⌉, 0, 2^b − 1) − ⌊z⌉)·s`` with
straight-through rounding and trainable ``W``, ``s`` and ``z`` (initialised to min-max RTN, the shared core's
asymmetric grid). The frozen form is an asymmetric ``QuantizedWeight`` with integer zero points, so it exports
to compressed-tensors and GPTQ.

- **Block-AP** (:func:`block_ap`): for each decoder block in turn, its linear layers are prepared and their
  weights, ``s`` and ``z`` trained (Adam) to reproduce the full-precision block's outputs (MSE) on calibration
  windows; the quantized block's inputs are the outputs of the already-trained quantized blocks before it.
- **E2E-QP** (:func:`freeze_codes`): the integer codes (and zero points) are frozen, only the step sizes ``s``
  train end to end on the language-model loss (``qat_finetune`` on the prepared model).
"""

from __future__ import annotations

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
        self.scale = nn.Parameter(torch.where(s > 0, s, torch.full_like(s, 1e-8)))
        self.zero = nn.Parameter(z.clone())

    def _codes(self, w: Tensor) -> tuple[Tensor, Tensor]:
        z = round_ste(self.zero).clamp(0, self.spec.qmax)
        q = torch.clamp(round_ste(grouped(w.float(), self.spec) / self.scale) + z, 0, self.spec.qmax)
        return q, z

    def forward(self, w: Tensor) -> Tensor:
        q, z = self._codes(w)
        return ungrouped((q - z) * self.scale, self.spec, w.shape).to(w.dtype)

    @torch.no_grad()
    def freeze(self, w: Tensor) -> QuantizedWeight:
        q, z = self._codes(w)
        codes = ungrouped(q, self.spec, w.shape).to(torch.uint8)
        return QuantizedWeight.from_qtensor(QTensor(codes, self.scale.detach().float(), z, self.spec, w.shape))


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


def block_ap(model: nn.Module, cfg: QATRecipeConfig, calib: Tensor, steps: int = 50, lr_weight: float = 1e-4,
             lr_quant: float = 1e-3, progress: bool = False) -> list[float]:
    """Block-AP over every decoder block (in place: the block's planned layers become ``QuantLinear``).

    Returns each block's final reconstruction MSE. ``calib``: token windows ``[n, T]`` from the train split.
    """
    require(cfg.recipe == "efficientqat", f"block_ap runs the efficientqat recipe, not {cfg.recipe!r}")
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
        layers = [m for m in block.modules() if isinstance(m, QuantLinear)]
        weights = [m.weight for m in layers if m.weight is not None]
        quant = [p for m in layers if m.weight_quantizer is not None for p in m.weight_quantizer.parameters()]
        opt = torch.optim.Adam([{"params": weights, "lr": lr_weight}, {"params": quant, "lr": lr_quant}])
        for step in range(steps):
            i = step % len(q_inputs)
            loss = F.mse_loss(run_block(block, q_inputs[i]).float(), targets[i].float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            outs = [run_block(block, inp) for inp in q_inputs]
            losses.append(float(sum(F.mse_loss(o.float(), t.float()) for o, t in zip(outs, targets)) / len(outs)))
        q_inputs = [inp.with_hidden(o) for inp, o in zip(q_inputs, outs)]
        fp_inputs = [inp.with_hidden(t) for inp, t in zip(fp_inputs, targets)]
    return losses


@torch.no_grad()
def freeze_codes(model: nn.Module) -> None:
    """Start of E2E-QP: every Block-AP layer keeps its integer codes; only its step sizes stay trainable."""
    model.requires_grad_(False)
    for layer in model.modules():
        if isinstance(layer, QuantLinear) and isinstance(layer.weight_quantizer, AsymWeightQuantizer):
            layer.weight_quantizer = FrozenCodesQuantizer(layer.weight_quantizer.freeze(layer.weight))
            layer.weight = None
