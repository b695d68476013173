"""``QuantLinear``: a linear layer with a weight quantizer and an input-activation quantizer.

Training form: ``y = a_q(x_r) · w_q(W_r)^T + b`` where ``x_r = x H`` and ``W_r = W H`` if the recipe rotates
(QuEST: block-diagonal orthonormal Hadamard ``H``, so ``x W^T = (x H)(W H)^T``), else ``x_r = x``, ``W_r = W``.
Frozen form (after ``convert``): the float weight is replaced by buffers ``weight_<field>`` (integer codes,
scales, zero points and per-recipe extras) from ``weight_quantizer.freeze``; the forward dequantizes them,
giving the same values as the fake-quantized weight. ``quant_format()`` describes the layout for exporters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qscale.qat.hadamard import hadamard_transform


class ActQuantizer(nn.Module):
    """Fake-quantizes a layer input ``[..., in]`` (dynamic per token, or with learned parameters)."""

    def describe(self) -> dict:
        """JSON-able description (format name, bits, granularity ...)."""
        raise NotImplementedError


class WeightQuantizer(nn.Module):
    """Fake-quantizes a weight ``[out, in]`` in training; freezes it into integer codes + parameters.

    Contract: ``forward(w)`` (differentiable, recipe-specific gradient) has the values of
    ``dequantize(freeze(w))``, and ``dequantize`` uses only the frozen fields (not the module's tensors).
    """

    def forward(self, w: Tensor) -> Tensor:
        raise NotImplementedError

    def freeze(self, w: Tensor) -> dict[str, Tensor]:
        """Codes and parameters: at least ``codes`` (an integer tensor) and ``scale``."""
        raise NotImplementedError

    def dequantize(self, frozen: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-able description of the frozen layout (format name, bits, granularity ...)."""
        raise NotImplementedError


def _drop_state(module: nn.Module) -> None:
    """Remove every parameter and buffer of ``module`` (and children): the frozen fields replace them."""
    for sub in module.modules():
        for name, _ in list(sub.named_parameters(recurse=False)) + list(sub.named_buffers(recurse=False)):
            delattr(sub, name)


def _params_to_buffers(module: nn.Module) -> None:
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
    ):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.bias = bias
        self.weight_quantizer = weight_quantizer
        self.act_quantizer = act_quantizer
        self.hadamard_group = hadamard_group
        self.frozen_fields: tuple[str, ...] = ()

    @property
    def converted(self) -> bool:
        return bool(self.frozen_fields)

    def _rotate(self, t: Tensor) -> Tensor:
        return hadamard_transform(t, self.hadamard_group) if self.hadamard_group else t

    def quantized_weight(self) -> Tensor:
        """The (rotated) weight the matmul uses: fake-quantized, or dequantized from the frozen codes."""
        if self.converted:
            return self.weight_quantizer.dequantize({f: getattr(self, f"weight_{f}") for f in self.frozen_fields})
        w = self._rotate(self.weight)
        return w if self.weight_quantizer is None else self.weight_quantizer(w)

    def forward(self, x: Tensor) -> Tensor:
        x = self._rotate(x)
        if self.act_quantizer is not None:
            x = self.act_quantizer(x)
        return F.linear(x, self.quantized_weight().to(x.dtype), self.bias)

    @torch.no_grad()
    def convert(self) -> None:
        """Freeze: replace the float weight (and the weight quantizer's own state) by the quantizer's codes
        and parameters; learned activation-quantizer parameters (LSQ steps, offsets) become buffers."""
        if self.converted:
            return
        if self.act_quantizer is not None:
            _params_to_buffers(self.act_quantizer)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        if self.weight_quantizer is None:
            self.weight.requires_grad_(False)
            return
        frozen = self.weight_quantizer.freeze(self._rotate(self.weight))
        del self.weight
        for field, value in frozen.items():
            self.register_buffer(f"weight_{field}", value.detach().contiguous())
        self.frozen_fields = tuple(frozen)
        _drop_state(self.weight_quantizer)

    def quant_format(self) -> dict:
        """What an exporter needs besides the buffers: weight layout, activation quantizer, rotation."""
        return {
            "weight": None if self.weight_quantizer is None else self.weight_quantizer.describe(),
            "act": None if self.act_quantizer is None else self.act_quantizer.describe(),
            "hadamard_group": self.hadamard_group,
            "fields": list(self.frozen_fields),
        }

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
                f", hadamard_group={self.hadamard_group}, converted={self.converted}")
