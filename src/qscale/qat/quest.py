"""``quest``: QuEST (Panferov et al. 2025, arXiv 2502.05003; SPEC §4).

Both operands of every quantized linear layer are rotated by an orthonormal Hadamard matrix in groups of
128 along the matmul dimension (``QuantLinear`` with ``hadamard_group``), which makes their rows close to
Gaussian. Each rotated row ``x_h`` is quantized to ``2^b`` uniform levels with no zero level,
``±step/2, ±3·step/2, …, ±scale``, with ``scale = α*(b) · RMS(x_h)`` (α* = the MSE-optimal clipping for
N(0, 1), table below) and ``step = 2·scale/(2^b − 1)``. On the shared core (``qscale.quant``) this is the
asymmetric grid ``q ∈ [0, 2^b − 1]`` with scale ``step`` and the half-integer zero ``(2^b − 1)/2``.

Backward, the trust estimator: with ``T = step/2`` and ``M = 1[|x̂_h − x_h| <= T]``,
``∂L/∂x = Hᵀ(M ⊙ ∂L/∂x̂_h)`` — gradients of values clipped further than half a step outside the grid are
dropped; ``Hᵀ`` is applied by autograd through the rotation. Scales are not trained. Frozen form: an
asymmetric per-row ``QuantizedWeight`` of the rotated weight with the half-integer zero ``(2^b − 1)/2`` and
the layer's Hadamard group: neither fits compressed-tensors or GPTQ, so it exports in qscale's own layout.

Checked against the authors' ``HalfHadamardTrustQuantizer`` / ``TrustQuantizer`` (IST-DASLab/QuEST,
``src/models/quantization/base_linear.py``: ``xq = round(clip(x, ±scale)/step + 1/2)·step − step/2``, trust mask
``|xq − x| <= std·α/(2^b − 1)`` = ``step/2``), tests/qat/test_quest.py. Their ``+ 1e-8`` on the scale is a clamp of
the RMS here (an all-zero row quantizes to values of order 1e-8 either way).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qscale.errors import require
from qscale.qat.linear import ActQuantizer, WeightQuantizer
from qscale.qat.registry import Recipe, register
from qscale.qat.ste import straight_through
from qscale.quant import (
    QTensor,
    QuantizedWeight,
    QuantSpec,
    grid_codes,
    require_finite,
    round_to_grid,
)
from qscale.quant.fused import backend_for, quest_triton

# MSE-optimal clipping scale α*(b) of a b-bit uniform quantizer for N(0, 1) (QuEST, SPEC §4), to the digits of the
# authors' ``OPTIMAL_GAUSSIAN_SCALES`` (IST-DASLab/QuEST, src/models/quantization/base_linear.py).
QUEST_ALPHA: dict[int, float] = {
    1: 0.7978845587140913,
    2: 1.4935346200015913,
    3: 2.051068354131873,
    4: 2.513930578568423,
    5: 2.9160938834961225,
    6: 3.276597282593217,
    7: 3.6010497188221655,
    8: 3.884938678807525,
}
_EPS = 1e-8


def quest_spec(bits: int) -> QuantSpec:
    """The core spec of QuEST's grid: codes ``0 … 2^b − 1`` per row (zero point given separately)."""
    return QuantSpec(bits, symmetric=False, granularity="token", group_size=None)


def quest_qparams(x: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Per-row ``step = 2·α*(b)·RMS(x)/(2^b − 1)`` and zero ``(2^b − 1)/2`` (float32, shape ``[..., 1]``)."""
    xf = x.float()
    rms = xf.pow(2).mean(dim=-1, keepdim=True).sqrt()
    levels = 2**bits - 1
    step = (2.0 * QUEST_ALPHA[bits] / levels) * rms.clamp_min(_EPS)
    return step, torch.full_like(step, levels / 2)


def quest_fake_quantize(x: Tensor, bits: int) -> Tensor:
    """QuEST quantization of the (already rotated) rows of ``x`` with the trust-estimator gradient; the
    rounding and the trust mask run as one Triton kernel on CUDA (``qscale.quant.fused``)."""
    xd = x.detach()
    step, zero = quest_qparams(xd, bits)
    require_finite(step, "values")  # a NaN/Inf anywhere in a row makes its RMS non-finite
    if backend_for(x) == "triton":
        x_hat, trust = quest_triton(xd, step, 2**bits - 1)
        return straight_through(x, x_hat, trust)
    xf = xd.float()
    x_hat = round_to_grid(xf, step, zero, quest_spec(bits))
    trust = (x_hat - xf).abs() <= step / 2
    return straight_through(x, x_hat.to(x.dtype), trust)


class QuestWeightQuantizer(WeightQuantizer):
    """QuEST on the rows of the Hadamard-rotated weight; freezes to uint8 codes, per-row step, zero."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, w: Tensor) -> Tensor:
        return quest_fake_quantize(w, self.bits)

    def freeze(self, w: Tensor) -> QuantizedWeight:
        step, zero = quest_qparams(w, self.bits)
        codes = grid_codes(w.float(), step, zero, quest_spec(self.bits)).to(torch.uint8)
        spec = QuantSpec(self.bits, symmetric=False, granularity="channel", group_size=None)
        return QuantizedWeight.from_qtensor(QTensor(codes, step, zero, spec, w.shape))


class QuestActQuantizer(ActQuantizer):
    """QuEST on each token of the rotated input (dynamic: RMS of the token)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, x: Tensor) -> Tensor:
        return quest_fake_quantize(x, self.bits)

    def describe(self) -> dict:
        return {"kind": "quest", "bits": self.bits}


@register
class QuestRecipe(Recipe):
    name = "quest"
    uses_group_size = False
    default_bits = (4, 4)
    hadamard = True

    def check_bits(self, w_bits: int, a_bits: int) -> None:
        for b in (w_bits, a_bits):
            require(b in QUEST_ALPHA or b == 16, f"quest supports 1..8 or 16 bits, got {b}")

    def weight_quantizer(self, weight, bits, cfg):
        return QuestWeightQuantizer(bits)

    def act_quantizer(self, in_features, bits, cfg):
        return QuestActQuantizer(bits)
