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

from torch import Tensor

from qscale.qat.linear import WeightQuantizer
from qscale.qat.registry import Recipe, register
from qscale.quant import QuantizedWeight, QuantSpec, quantize
from qscale.quant.ste import (  # noqa: F401  (re-exported: the STE primitives live in qscale.quant.ste)
    STEActQuantizer,
    act_spec,
    round_ste,
    ste_fake_quantize,
    straight_through,
)


def weight_spec(bits: int, group_size: int | None, grid: str = "restricted") -> QuantSpec:
    """Symmetric weight quantizer per group of G input columns, or per output row (restricted AbsMax grid
    by default, as Chen et al. 2025)."""
    if group_size is None:
        return QuantSpec(bits, symmetric=True, granularity="channel", group_size=None, grid=grid)
    return QuantSpec(bits, symmetric=True, granularity="group", group_size=group_size, grid=grid)


class STEWeightQuantizer(WeightQuantizer):
    """RTN weight fake quantization (absmax per group) with the STE; freezes to core ``QTensor`` fields."""

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = spec

    def forward(self, w: Tensor) -> Tensor:
        return ste_fake_quantize(w, self.spec)

    def freeze(self, w: Tensor) -> QuantizedWeight:
        return QuantizedWeight.from_qtensor(quantize(w, self.spec))


@register
class STERecipe(Recipe):
    name = "ste"
    default_bits = (4, 4)

    def weight_quantizer(self, weight, bits, cfg):
        return STEWeightQuantizer(weight_spec(bits, cfg.group_size))

    def act_quantizer(self, in_features, bits, cfg):
        return STEActQuantizer(act_spec(bits, cfg.act_group_size))
