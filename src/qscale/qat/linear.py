"""``QuantLinear``: a linear layer with a weight quantizer and an input-activation quantizer.

Training form: ``y = a_q(x_r) · w_q(W_r)^T + b`` where ``x_r = x H`` and ``W_r = W H`` if the recipe rotates
(QuEST: block-diagonal orthonormal Hadamard ``H``, so ``x W^T = (x H)(W H)^T``), else ``x_r = x``, ``W_r = W``.
``convert`` turns it into the one quantized-linear representation, ``qscale.quant.QuantizedLinear`` (packed
integer codes from ``weight_quantizer.freeze``, the activation quantizer and the rotation kept), which gives
the same outputs and is what PTQ produces and every exporter reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qscale.errors import QscaleError
from qscale.quant import QuantizedLinear, QuantizedWeight
from qscale.quant.hadamard import hadamard_transform
from qscale.quant.ste import ActQuantizer


class WeightQuantizer(nn.Module):
    """Fake-quantizes a weight ``[out, in]`` in training; freezes it into a ``QuantizedWeight``.

    Contract: ``forward(w)`` (differentiable, recipe-specific gradient) has the values of
    ``freeze(w).dequantize()``, so converting a trained layer does not change its outputs. A quantizer with
    ``owns_weight = True`` keeps its own (frozen, possibly downcast) copy of the weight: the layer then holds
    no float weight and calls ``forward(None)`` / ``freeze(None)`` (low-rank QAT: LR-QAT, L4Q). Its learned
    parameters (scales, step sizes, zero points, low-rank factors) are never weight-decayed (``no_weight_decay``,
    read by ``qscale.train.engine``).
    """

    no_weight_decay = True
    owns_weight = False

    def forward(self, w: Tensor) -> Tensor:
        raise NotImplementedError

    def freeze(self, w: Tensor) -> QuantizedWeight:
        """Integer codes, scales and zero points (and any layout extras) of ``w``."""
        raise NotImplementedError


def params_to_buffers(module: nn.Module) -> None:
    """Turn every learned parameter of ``module`` (and children) into a buffer with the same name."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, p.detach().clone())


class QuantLinear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` (``weight`` is the original ``[out, in]`` parameter)."""

    def __init__(
        self,
        weight: nn.Parameter,
        bias: nn.Parameter | None,
        weight_quantizer: WeightQuantizer | None,
        act_quantizer: ActQuantizer | None,
        hadamard_group: int = 0,
        name: str = "",
        source: str = "Linear",
    ):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        owned = weight_quantizer is not None and weight_quantizer.owns_weight
        self.weight = None if owned else weight
        self.bias = bias
        self.weight_quantizer = weight_quantizer
        self.act_quantizer = act_quantizer
        self.hadamard_group = hadamard_group
        self.name = name
        self.source = source

    def _rotate(self, t: Tensor) -> Tensor:
        return hadamard_transform(t, self.hadamard_group) if self.hadamard_group else t

    def quantized_weight(self) -> Tensor:
        """The (rotated) fake-quantized weight the matmul uses."""
        if self.weight is None:
            return self.weight_quantizer(None)
        w = self._rotate(self.weight)
        return w if self.weight_quantizer is None else self.weight_quantizer(w)

    def forward(self, x: Tensor) -> Tensor:
        try:
            x = self._rotate(x)
            if self.act_quantizer is not None:
                x = self.act_quantizer(x)
            return F.linear(x, self.quantized_weight().to(x.dtype), self.bias)
        except QscaleError as e:  # non-finite values: say which layer
            raise QscaleError(f"layer {self.name or '?'}: {e}") from None

    @torch.no_grad()
    def to_quantized(self, name: str = "") -> nn.Module:
        """The converted layer: a ``QuantizedLinear`` holding ``weight_quantizer.freeze`` of the (rotated) weight,
        with the activation quantizer's learned parameters turned into buffers. A layer with only its input
        quantized (W16Ax) keeps its float weight, frozen, in this module."""
        if self.act_quantizer is not None:
            params_to_buffers(self.act_quantizer)
        if self.weight_quantizer is None:
            self.requires_grad_(False)
            return self
        w = None if self.weight is None else self._rotate(self.weight.detach())
        qweight = self.weight_quantizer.freeze(w)
        return QuantizedLinear(
            qweight, self.bias, self.act_quantizer, self.hadamard_group, name=name, source=self.source
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
            f", hadamard_group={self.hadamard_group}"
        )
