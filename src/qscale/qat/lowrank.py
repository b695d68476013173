"""Low-rank QAT for models that do not fit full QAT: ``lrqat`` (LR-QAT) and ``l4q`` (L4Q).

Both keep the pretrained weight ``W₀`` frozen inside the quantizer (no gradient, no optimizer state) and train
a rank-r update ``(α/r)·A·B`` (``A`` ``[out, r]`` starts at 0, ``B`` ``[r, in]`` random, as LoRA) plus the
quantization scales. The ``[out, in]`` weight is recomputed in the backward pass instead of stored
(activation checkpointing of the weight computation), so training memory is ``W₀`` in storage plus the
low-rank factors and one layer's temporaries. After training ``A·B`` is merged into the integer codes:
the converted layer is an ordinary ``QuantizedLinear`` with no extra parameters, the size of a PTQ layer.

- ``lrqat`` — Bondarenko et al. 2024 (arXiv 2406.06385), eq. 3:
  ``Ŵ = s · clip(round(φ(W₀/s₀) + (α/r)·A·B), −2^(b−1), 2^(b−1) − 1)``, ``s₀`` the symmetric full-grid scale
  of ``W₀`` (``2·absmax/(2^b − 1)`` per group, the grid of GPTQ/compressed-tensors), ``s`` trainable
  (initialised to ``s₀``), straight-through rounding. ``φ`` stores ``W₀/s₀`` downcast as int8 fixed point
  with ``8 − b`` fractional bits (Q(b).(8−b): the paper's int8 ``φ``), a quarter of fp32.
- ``l4q`` — Jeon et al. 2024 (arXiv 2402.04902): LSQ on the merged weight,
  ``Ŵ = LSQ(W₀ + (α/r)·A·B; s)`` with LSQ's step gradient and init (``qscale.qat.lsq``); ``W₀`` frozen in
  its own dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from qscale.errors import require
from qscale.qat.linear import WeightQuantizer
from qscale.qat.lsq import LSQWeightQuantizer, lsq_fake_quantize
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


def _low_rank(module: nn.Module, out_features: int, in_features: int, rank: int, alpha: float, like: Tensor) -> None:
    """Add the trainable factors ``A`` (zeros) and ``B`` (N(0, 1/in)) and the update scale ``α/r``."""
    g = torch.Generator().manual_seed(out_features * 31 + in_features)
    module.A = nn.Parameter(torch.zeros(out_features, rank, dtype=torch.float32, device=like.device))
    b = torch.randn(rank, in_features, generator=g) / math.sqrt(in_features)
    module.B = nn.Parameter(b.to(device=like.device))
    module.lora_scale = alpha / rank


class LRQATWeightQuantizer(WeightQuantizer):
    """LR-QAT: int8 fixed-point ``φ(W₀/s₀)`` + trainable ``A``, ``B`` and per-group scale ``s``."""

    owns_weight = True

    def __init__(self, weight: Tensor, spec: QuantSpec, rank: int, alpha: float):
        super().__init__()
        require(spec.symmetric and spec.bits >= 2, "lrqat quantizes weights symmetrically to 2..8 bits")
        require_finite(weight, "a weight")
        self.spec = spec
        self.shape = tuple(weight.shape)
        self.frac_bits = 8 - spec.bits
        with torch.no_grad():
            s0, _ = compute_qparams(weight.detach(), spec)
            s0 = torch.where(s0 > 0, s0, torch.ones_like(s0))
            ratio = ungrouped(grouped(weight.detach().float(), spec) / s0, spec, weight.shape)
            fixed = torch.round(ratio * 2**self.frac_bits).clamp(-128, 127).to(torch.int8)
        self.register_buffer("w0_fixed", fixed)
        self.scale = nn.Parameter(s0.clone())
        _low_rank(self, weight.shape[0], weight.shape[1], rank, alpha, weight)

    def _codes(self, A: Tensor, B: Tensor) -> Tensor:
        u = self.w0_fixed.float() / 2**self.frac_bits + self.lora_scale * (A @ B)
        return torch.clamp(round_ste(u), self.spec.qmin, self.spec.qmax)

    def _weight(self, A: Tensor, B: Tensor, scale: Tensor) -> Tensor:
        q = self._codes(A, B)
        return ungrouped(grouped(q, self.spec) * scale, self.spec, q.shape)

    def forward(self, w: Tensor | None) -> Tensor:
        if torch.is_grad_enabled():  # recompute the [out, in] weight in backward instead of keeping it
            return checkpoint(self._weight, self.A, self.B, self.scale, use_reentrant=False)
        return self._weight(self.A, self.B, self.scale)

    @torch.no_grad()
    def freeze(self, w: Tensor | None) -> QuantizedWeight:
        codes = self._codes(self.A, self.B).to(torch.int8)
        scale = self.scale.detach().float()
        return QuantizedWeight.from_qtensor(QTensor(codes, scale, torch.zeros_like(scale), self.spec, codes.shape))


class L4QWeightQuantizer(LSQWeightQuantizer):
    """L4Q: LSQ on ``W₀ + (α/r)·A·B`` with ``W₀`` a frozen buffer."""

    owns_weight = True

    def __init__(self, weight: Tensor, spec: QuantSpec, rank: int, alpha: float):
        require_finite(weight, "a weight")
        super().__init__(weight, spec)
        self.register_buffer("w0", weight.detach().clone())
        _low_rank(self, weight.shape[0], weight.shape[1], rank, alpha, weight)

    def _merged(self, A: Tensor, B: Tensor) -> Tensor:
        return self.w0 + (self.lora_scale * (A @ B)).to(self.w0.dtype)

    def _weight(self, A: Tensor, B: Tensor, step: Tensor) -> Tensor:
        return lsq_fake_quantize(self._merged(A, B), self.spec, step, self.grad_scale)

    def forward(self, w: Tensor | None) -> Tensor:
        if torch.is_grad_enabled():
            return checkpoint(self._weight, self.A, self.B, self.step, use_reentrant=False)
        return self._weight(self.A, self.B, self.step)

    @torch.no_grad()
    def freeze(self, w: Tensor | None) -> QuantizedWeight:
        return super().freeze(self._merged(self.A, self.B))


class _LowRankRecipe(Recipe):
    default_bits = (4, 16)
    trains_quantizers_only = True

    def check_bits(self, w_bits: int, a_bits: int) -> None:
        require(w_bits == 16 or 2 <= w_bits <= 8, f"{self.name} quantizes weights to 2..8 bits, got {w_bits}")
        require(a_bits == 16, f"{self.name} is weight-only (a_bits 16), got a_bits {a_bits}")

    def act_quantizer(self, in_features, bits, cfg):
        raise NotImplementedError


@register
class LRQATRecipe(_LowRankRecipe):
    name = "lrqat"

    def weight_quantizer(self, weight, bits, cfg):
        return LRQATWeightQuantizer(weight, weight_spec(bits, cfg.group_size, grid="full"), cfg.rank, cfg.lora_alpha)


@register
class L4QRecipe(_LowRankRecipe):
    name = "l4q"

    def weight_quantizer(self, weight, bits, cfg):
        return L4QWeightQuantizer(weight, weight_spec(bits, cfg.group_size, grid="full"), cfg.rank, cfg.lora_alpha)
