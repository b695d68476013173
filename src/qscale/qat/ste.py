"""``ste``: round-to-nearest fake quantization with the straight-through estimator.

Forward: ``x̂ = (clamp(round(x/s + z), qmin, qmax) - z)·s`` from the shared core ``qscale.quant`` (SPEC §6).
Backward (Bengio et al. 2013, "Estimating or propagating gradients through stochastic neurons"; the
clipped STE of Esser et al. 2020 eq. 5 / Jacob et al. 2018): ``∂x̂/∂x = 1`` inside the clipping range
``qmin - 1/2 <= x/s + z <= qmax + 1/2`` and 0 outside; scales are not trained. With parameters computed
from the data (absmax / min-max, as in Chen et al. 2025's QAT-law runs, SPEC §2) every value lies inside,
so the gradient is the identity and no mask is stored.

Weights: one scale per output row per G input columns (or per row); activations: one scale per token
(or per token per G features). Any WxAy with 1..8 bits; 16 = that operand is not quantized. Grid: the
restricted AbsMax grid ``s = absmax/(2^(b−1) − 1)`` (Chen et al. 2025's AbsMax quantizers), not the
full PTQ grid; the frozen codes still fit every symmetric packed layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qscale.qat.fused import fused_fake_quantize
from qscale.qat.linear import ActQuantizer, WeightQuantizer
from qscale.qat.registry import Recipe, register
from qscale.quant import (
    QuantizedWeight,
    QuantSpec,
    grouped,
    quantize,
    round_to_grid,
    ungrouped,
)


class _StraightThrough(torch.autograd.Function):
    """Returns the precomputed ``x_hat``; passes ``grad`` to ``x`` where ``mask`` (all if None)."""

    @staticmethod
    def forward(ctx, x: Tensor, x_hat: Tensor, mask: Tensor | None) -> Tensor:
        ctx.save_for_backward(mask)
        return x_hat

    @staticmethod
    def backward(ctx, grad: Tensor):
        (mask,) = ctx.saved_tensors
        return (grad if mask is None else grad * mask), None, None


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` with the identity gradient (the straight-through estimator of rounding alone)."""
    return _RoundSTE.apply(x)


def straight_through(x: Tensor, x_hat: Tensor, mask: Tensor | None = None) -> Tensor:
    """``x_hat`` in the forward pass, ``mask ⊙ grad`` (or ``grad``) to ``x`` in the backward pass."""
    return _StraightThrough.apply(x, x_hat.detach(), mask)


def ste_fake_quantize(x: Tensor, spec: QuantSpec, scale: Tensor | None = None, zero: Tensor | None = None) -> Tensor:
    """Fake quantization with the clipped STE; parameters from the data unless given (grouped-view shapes).

    Forward values equal ``dequantize(quantize(x, spec, scale, zero))`` exactly (in ``x``'s dtype); with
    parameters from the data the forward runs fused on CUDA (``qscale.qat.fused``).
    """
    if scale is None:
        return straight_through(x, fused_fake_quantize(x.detach(), spec))
    xd = x.detach()
    xg = grouped(xd.to(torch.promote_types(xd.dtype, torch.float32)), spec)
    if zero is None:
        zero = torch.full_like(scale, -0.5 if spec.bits == 1 and spec.symmetric else 0.0)
    scale, zero = scale.to(xg.dtype), zero.to(xg.dtype)
    u = xg / scale + zero
    inside = (u >= spec.qmin - 0.5) & (u <= spec.qmax + 0.5)
    x_hat = ungrouped(round_to_grid(xg, scale, zero, spec), spec, x.shape).to(x.dtype)
    return straight_through(x, x_hat, ungrouped(inside, spec, x.shape))


def weight_spec(bits: int, group_size: int | None, grid: str = "restricted") -> QuantSpec:
    """Symmetric weight quantizer per group of G input columns, or per output row (restricted AbsMax grid
    by default, as Chen et al. 2025)."""
    if group_size is None:
        return QuantSpec(bits, symmetric=True, granularity="channel", group_size=None, grid=grid)
    return QuantSpec(bits, symmetric=True, granularity="group", group_size=group_size, grid=grid)


def act_spec(bits: int, group_size: int | None) -> QuantSpec:
    """Symmetric AbsMax activation quantizer (restricted grid) per token, or per token per G features."""
    if group_size is None:
        return QuantSpec(bits, symmetric=True, granularity="token", group_size=None, grid="restricted")
    return QuantSpec(bits, symmetric=True, granularity="group", group_size=group_size, grid="restricted")


class STEWeightQuantizer(WeightQuantizer):
    """RTN weight fake quantization (absmax per group) with the STE; freezes to core ``QTensor`` fields."""

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = spec

    def forward(self, w: Tensor) -> Tensor:
        return ste_fake_quantize(w, self.spec)

    def freeze(self, w: Tensor) -> QuantizedWeight:
        return QuantizedWeight.from_qtensor(quantize(w, self.spec))


class STEActQuantizer(ActQuantizer):
    """Dynamic absmax activation fake quantization (per token or per token-group) with the STE."""

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = spec

    def forward(self, x: Tensor) -> Tensor:
        return ste_fake_quantize(x, self.spec)

    def describe(self) -> dict:
        return {"kind": "absmax", "bits": self.spec.bits, "granularity": self.spec.granularity,
                "group_size": self.spec.group_size, "grid": self.spec.grid}


@register
class STERecipe(Recipe):
    name = "ste"
    default_bits = (4, 4)

    def weight_quantizer(self, weight, bits, cfg):
        return STEWeightQuantizer(weight_spec(bits, cfg.group_size))

    def act_quantizer(self, in_features, bits, cfg):
        return STEActQuantizer(act_spec(bits, cfg.act_group_size))

