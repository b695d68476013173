"""Low-rank QAT for models that do not fit full QAT: ``lrqat`` (LR-QAT) and ``l4q`` (L4Q).

Both keep the pretrained weight ``W₀`` frozen inside the quantizer (no gradient, no optimizer state) and train
a rank-r update ``(α/r)·A·B`` (``A`` ``[out, r]`` starts at 0, ``B`` ``[r, in]`` random, as LoRA; every layer
draws its own ``B`` from the global RNG, so layers of the same shape do not share one) plus the quantization
parameters. The ``[out, in]`` weight is recomputed in the backward pass instead of stored (activation
checkpointing of the weight computation), so training memory is ``W₀`` in storage plus the low-rank factors and
one layer's temporaries. After training ``A·B`` is merged into the integer codes: the converted layer is an
ordinary ``QuantizedLinear`` with no extra parameters, the size of a PTQ layer.

- ``lrqat`` — Bondarenko et al. 2024 (arXiv 2406.06385), eq. 3:
  ``Ŵ = s · clip(round(φ(W₀/s₀) + (α/r)·A·B), −2^(b−1), 2^(b−1) − 1)``, ``s₀`` the symmetric full-grid scale
  of ``W₀`` (``2·absmax/(2^b − 1)`` per group, the grid of GPTQ/compressed-tensors), ``s`` trainable
  (initialised to ``s₀``), straight-through rounding. ``φ`` clips ``W₀/s₀`` to ``[q_min, q_max]`` and stores it
  as int8 fixed point with ``8 − b`` fractional bits (Q(b).(8−b), the paper's §3 "φ(·) = clip(·, q_min, q_max)
  ... downcast to INT8"): a quarter of fp32. The scales learn at :data:`LRQAT_SCALE_LR_RATIO` times the LR of
  ``A`` and ``B`` (the authors' defaults: 1e-3 for ``A``, ``B``; 1e-5 for the scales), through the engine's
  per-parameter learning rates (``param_lr_scales``).
- ``l4q`` — Jeon et al. 2024 (arXiv 2402.04902, "L4Q: Parameter Efficient Quantization-Aware Fine-Tuning on
  Large Language Models"): LSQ+ on the merged weight, ``Ŵ = round(clip((W₀ + (α/r)·A·B − β)/s, −Q_N, Q_P))·s + β``
  with a learned step ``s`` and offset ``β`` per group (LSQ's step gradient, scale and init; LSQ+'s offset
  gradient, ``qscale.qat.lsq``, times the same gradient scale ``g``; ``β`` starts at 0). Two stages (the paper's
  Algorithm 1): a warm-up in which only the LoRA factors train on the frozen quantized weight,
  ``Ŵ = Q(W₀; s, β) + (α/r)·A·B`` (the QLoRA form: ``s`` and ``β`` get no gradient and do not move), for the first
  :attr:`L4QOptions.warmup_fraction` of the steps; then the joint stage above. The fraction is qscale's choice (the
  paper gives no number we could find). Because ``β`` is real-valued the frozen weight is asymmetric with non-integer
  zero points ``z = 2^(b−1) − β/s``: it exports exactly to the qscale format; compressed-tensors and GPTQ refuse it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from qscale.errors import require
from qscale.qat.hooks import Objective, TrainHooks
from qscale.qat.linear import WeightQuantizer
from qscale.qat.lsq import LSQWeightQuantizer, lsq_fake_quantize
from qscale.qat.registry import Recipe, register
from qscale.qat.ste import round_ste, weight_spec
from qscale.quant import (
    QTensor,
    QuantizedWeight,
    QuantSpec,
    compute_qparams,
    grid_codes,
    grouped,
    require_finite,
    ungrouped,
)

LRQAT_SCALE_LR_RATIO = 1e-5 / 1e-3  # LR-QAT: LR of the scales / LR of A and B (the authors' defaults)


def _low_rank(module: nn.Module, out_features: int, in_features: int, rank: int, alpha: float, like: Tensor) -> None:
    """Add the trainable factors ``A`` (zeros) and ``B`` (N(0, 1/in), from the global RNG: one draw per layer)."""
    module.A = nn.Parameter(torch.zeros(out_features, rank, dtype=torch.float32, device=like.device))
    module.B = nn.Parameter(torch.randn(rank, in_features, device=like.device) / math.sqrt(in_features))
    module.lora_scale = alpha / rank


class LRQATWeightQuantizer(WeightQuantizer):
    """LR-QAT: int8 fixed-point ``φ(W₀/s₀)`` (clipped to the grid) + trainable ``A``, ``B`` and per-group ``s``."""

    owns_weight = True
    param_lr_scales: ClassVar[dict[str, float]] = {"scale": LRQAT_SCALE_LR_RATIO}

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
            ratio = ratio.clamp(spec.qmin, spec.qmax)  # φ = clip(W₀/s₀, q_min, q_max), then the int8 downcast
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


class MergedLSQWeightQuantizer(LSQWeightQuantizer):
    """LSQ on ``W₀ + (α/r)·A·B`` with ``W₀`` a frozen buffer (the merged-then-quantized layer that L4Q and
    EfficientDM's QALoRA share; subclasses change :meth:`_merged`)."""

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


class L4QWeightQuantizer(MergedLSQWeightQuantizer):
    """L4Q: LSQ+ (step ``s``, offset ``β``) on ``W₀ + (α/r)·A·B``; ``warmup`` switches to the first stage
    ``Q(W₀; s, β) + (α/r)·A·B`` with ``s``, ``β`` frozen."""

    def __init__(self, weight: Tensor, spec: QuantSpec, rank: int, alpha: float):
        super().__init__(weight, spec, rank, alpha)
        self.offset = nn.Parameter(torch.zeros_like(self.step))
        self.warmup = False

    def _l4q_weight(self, A: Tensor, B: Tensor, step: Tensor, offset: Tensor) -> Tensor:
        if self.warmup:
            frozen = lsq_fake_quantize(self.w0, self.spec, step.detach(), self.grad_scale, offset.detach())
            return frozen + (self._merged(A, B) - self.w0)
        g = self.grad_scale  # LSQ+'s gradient scale on the offset too (the step gets it inside the LSQ function)
        return lsq_fake_quantize(self._merged(A, B), self.spec, step, g, offset * g + (offset - offset * g).detach())

    def forward(self, w: Tensor | None) -> Tensor:
        if torch.is_grad_enabled():
            return checkpoint(self._l4q_weight, self.A, self.B, self.step, self.offset, use_reentrant=False)
        return self._l4q_weight(self.A, self.B, self.step, self.offset)

    @torch.no_grad()
    def freeze(self, w: Tensor | None) -> QuantizedWeight:
        """The joint stage's weight as asymmetric codes ``q + 2^(b−1)`` with zero ``2^(b−1) − β/s``."""
        merged = self._merged(self.A, self.B)
        step, offset = self.step.detach().float().abs(), self.offset.detach().float()  # |s|, as the forward uses
        signed = grid_codes(grouped(merged.float(), self.spec) - offset, step, torch.zeros_like(step), self.spec)
        shift = -self.spec.qmin
        spec = QuantSpec(self.spec.bits, False, self.spec.granularity, self.spec.group_size)
        codes = ungrouped(signed + shift, self.spec, merged.shape).to(torch.uint8)
        return QuantizedWeight.from_qtensor(QTensor(codes, step, shift - offset / step, spec, merged.shape))


@dataclass(frozen=True)
class L4QOptions:
    """warmup_fraction: share of the steps in L4Q's first stage (LoRA on the frozen quantized weight)."""

    warmup_fraction: float = 0.1

    def __post_init__(self) -> None:
        require(0 <= self.warmup_fraction < 1, f"l4q warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


class L4QHooks(TrainHooks):
    """Puts every L4Q quantizer in the warm-up stage for the first ``warmup_fraction`` of the steps."""

    def __init__(self, model: nn.Module, opts: L4QOptions):
        self.quantizers = [m for m in model.modules() if isinstance(m, L4QWeightQuantizer)]
        self.opts = opts

    def backward(self, model: nn.Module, batch: Tensor, objective: Objective, step: int, steps: int) -> Tensor:
        warm = step < math.floor(self.opts.warmup_fraction * steps)
        for q in self.quantizers:
            q.warmup = warm
        try:
            return super().backward(model, batch, objective, step, steps)
        finally:
            for q in self.quantizers:
                q.warmup = False


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
    options_type = L4QOptions

    def weight_quantizer(self, weight, bits, cfg):
        return L4QWeightQuantizer(weight, weight_spec(bits, cfg.group_size, grid="full"), cfg.rank, cfg.lora_alpha)

    def hooks(self, model, cfg, teacher):
        return L4QHooks(model, cfg.options)
