"""``bitnet``: BitNet b1.58 (Ma et al. 2024, arXiv 2402.17764, eqs. 1-3; SPEC §6).

Weights: ternary absmean with ``γ = mean|W|`` over the whole matrix (one scale per layer) and the
straight-through estimator (identity gradient). The paper writes ``W̃ = RoundClip(W/(γ + ε), −1, 1)`` (eq. 1-3);
the authors' training code ("The Era of 1-bit LLMs: Training Tips, Code and FAQ", microsoft/unilm
``bitnet/``, Figure 3: ``scale = 1.0 / w.abs().mean().clamp_(min=1e-5)``,
``u = (w * scale).round().clamp_(-1, 1) / scale``) clamps γ at ε instead of adding it. The code's reading is
implemented, ``W̃ = RoundClip(W/γ', −1, 1)·γ'`` with ``γ' = max(γ, ε)``: adding ε moves the ternary threshold
``γ/2`` by a relative ε/γ (6e-4 for weights of std 0.02), which flips the codes of weights next to it.
Activations: absmax per token to 8 bits (``a_bits``; the shared core's symmetric
per-token quantizer on the restricted AbsMax grid, ``s = absmax/127``, as the paper's ``Q_b`` scaling) with
the STE. Frozen form: the codes {−1, 0, 1} as a 2-bit symmetric per-tensor ``QuantizedWeight`` with scale
``γ`` — exactly a 2-bit symmetric packed layout (code −2 unused), so it exports as pack-quantized/GPTQ.

Deliberate difference: the authors' ``BitLinear`` normalizes its input with its own RMSNorm (and the Llama
norms before attention and SwiGLU are removed); qscale fine-tunes a pretrained model, whose function such an
architecture change would alter, so the layer input is quantized as it comes (q/k/v and gate/up inputs are
RMS-normalized by the model's own norms already).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qscale.errors import require
from qscale.qat.linear import WeightQuantizer
from qscale.qat.registry import Recipe, register
from qscale.qat.ste import STEActQuantizer, act_spec, straight_through
from qscale.quant import QTensor, QuantizedWeight, QuantSpec

BITNET_EPS = 1e-5
TERNARY_SPEC = QuantSpec(2, symmetric=True, granularity="tensor", group_size=None)  # codes {-1, 0, 1} of 4


def ternary_codes(w: Tensor) -> tuple[Tensor, Tensor]:
    """Codes ``RoundClip(W/γ', −1, 1)`` (float) and ``γ' = max(mean|W|, ε)`` (shape ``[1, 1]``), in float32."""
    wf = w.float()
    gamma = wf.abs().mean().clamp_min(BITNET_EPS).reshape(1, 1)
    return torch.clamp(torch.round(wf / gamma), -1, 1), gamma


class TernaryWeightQuantizer(WeightQuantizer):
    """BitNet b1.58 absmean ternary weights with the STE."""

    def forward(self, w: Tensor) -> Tensor:
        codes, gamma = ternary_codes(w.detach())
        return straight_through(w, (codes * gamma).to(w.dtype))

    def freeze(self, w: Tensor) -> QuantizedWeight:
        codes, gamma = ternary_codes(w)
        qt = QTensor(codes.to(torch.int8), gamma, torch.zeros_like(gamma), TERNARY_SPEC, w.shape)
        return QuantizedWeight.from_qtensor(qt)


@register
class BitNetRecipe(Recipe):
    name = "bitnet"
    uses_group_size = False
    default_bits = (2, 8)

    def check_bits(self, w_bits: int, a_bits: int) -> None:
        require(w_bits in (2, 16), f"bitnet weights are ternary (w_bits 2) or unquantized (16), got {w_bits}")

    def weight_quantizer(self, weight, bits, cfg):
        return TernaryWeightQuantizer()

    def act_quantizer(self, in_features, bits, cfg):
        return STEActQuantizer(act_spec(bits, None))
