"""The straight-through estimator and the dynamic absmax activation quantizer, shared by PTQ and QAT.

Forward: ``x̂ = (clamp(round(x/s + z), qmin, qmax) - z)·s`` from the shared core (SPEC §6). Backward
(Bengio et al. 2013, "Estimating or propagating gradients through stochastic neurons"; the clipped STE of
Esser et al. 2020 eq. 5 / Jacob et al. 2018): ``∂x̂/∂x = 1`` inside the clipping range
``qmin - 1/2 <= x/s + z <= qmax + 1/2`` and 0 outside. With parameters computed from the data (absmax) every
value lies inside, so the gradient is the identity and no mask is stored. They live here, below both
``qscale.ptq`` (QLLM's activation quantization) and ``qscale.qat`` (the recipes), so there is one of each.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qscale.quant.core import grouped, round_to_grid, ungrouped
from qscale.quant.fused import fused_fake_quantize
from qscale.quant.spec import QuantSpec


class ActQuantizer(nn.Module):
    """Fake-quantizes a layer input ``[..., in]`` (dynamic per token, or with learned parameters).

    Its learned parameters (step sizes, offsets) are quantizer parameters: never weight-decayed
    (``no_weight_decay``, read by ``qscale.train.engine``).
    """

    no_weight_decay = True

    def describe(self) -> dict:
        """JSON-able description (format name, bits, granularity ...)."""
        raise NotImplementedError


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
    parameters from the data the forward runs fused on CUDA (``qscale.quant.fused``).
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


def act_spec(bits: int, group_size: int | None) -> QuantSpec:
    """Symmetric AbsMax activation quantizer (restricted grid) per token, or per token per G features."""
    if group_size is None:
        return QuantSpec(bits, symmetric=True, granularity="token", group_size=None, grid="restricted")
    return QuantSpec(bits, symmetric=True, granularity="group", group_size=group_size, grid="restricted")


class STEActQuantizer(ActQuantizer):
    """Dynamic activation fake quantization from the data (per token or per token-group) with the STE: absmax
    (symmetric spec) or min/max (asymmetric spec, QLLM's)."""

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = spec

    def forward(self, x: Tensor) -> Tensor:
        return ste_fake_quantize(x, self.spec)

    def describe(self) -> dict:
        return {
            "kind": "absmax",
            "bits": self.spec.bits,
            "granularity": self.spec.granularity,
            "group_size": self.spec.group_size,
            "grid": self.spec.grid,
            "symmetric": self.spec.symmetric,
        }
