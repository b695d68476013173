"""``pbllm``: partially binarized weights (PB-LLM, Shang et al. 2023, arXiv 2310.00034; SPEC §6).

At ``prepare`` a fraction ``r`` of each layer's weights, the largest by magnitude (exactly
``round(r · numel)`` entries), is marked salient: those are kept at 8 bits (symmetric per output row on the
restricted AbsMax grid ``s = absmax/127``, the shared core) and frozen — their values come from a buffer taken at
``prepare``, so neither the gradient nor weight decay can move them (the paper's gradient mask). The rest is binarized,
``α · sign(w)`` with the per-row optimal scale ``α = mean|w|`` over the row's non-salient weights (the L2-optimal scale
of a sign quantizer, as in PB-LLM and XNOR-Net), trained with the straight-through estimator.
Activations are left unquantized by default (``a_bits`` 16; otherwise absmax per token with the STE).
Frozen form: a "partial-binary" ``QuantizedWeight``: int8 codes (8-bit codes where salient, ±1
elsewhere), the per-row 8-bit scale, and extras ``mask`` (salient) and per-row ``alpha``; no standard packed
format holds it, so it exports in qscale's own layout.

Tested against the paper's equations, not against the authors' QAT code (hahnyuan/PB-LLM @ fe85da9,
``quant/outlier_quantizer.py``, ``BinaryXnorExceptOutliersLinear``), which was run and is not followed where it
departs from the paper: its ``weight_quant_8bit`` casts ``(w − round(min w))/range·255`` to uint8 *before*
clamping, so negative weights wrap around (on a tiny example every "8-bit" weight came out positive); it replaces
every weight, salient or not, by that 8-bit value; ``w[~mask].abs().mean(-1)`` flattens the boolean selection, so
its binary scale is one scalar per matrix, not per row; and it picks the salient weights by the signed quantiles
``r/2`` and ``1 − r/2`` of ``w`` (the magnitude criterion for a symmetric distribution), here by ``|w|``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qscale.errors import require
from qscale.qat.linear import WeightQuantizer
from qscale.qat.registry import Recipe, register
from qscale.qat.ste import STEActQuantizer, act_spec, straight_through
from qscale.quant import QTensor, QuantizedWeight, QuantSpec, quantize

SALIENT_SPEC = QuantSpec(8, symmetric=True, granularity="channel", group_size=None, grid="restricted")


def salient_mask(w: Tensor, fraction: float) -> Tensor:
    """Boolean mask of exactly ``round(fraction · numel)`` entries of largest ``|w|``."""
    k = round(fraction * w.numel())
    mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    if k:
        mask[torch.topk(w.detach().abs().flatten(), k).indices] = True
    return mask.reshape(w.shape)


def _binary_part(w: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Sign codes (±1, sign(0) = +1) and per-row ``α = mean|w|`` over non-salient entries (float32)."""
    wf = w.float()
    keep = (~mask).float()
    alpha = (wf.abs() * keep).sum(-1, keepdim=True) / keep.sum(-1, keepdim=True).clamp_min(1)
    return torch.where(wf >= 0, 1.0, -1.0), alpha


class PartialBinaryWeightQuantizer(WeightQuantizer):
    """Salient weights frozen at 8 bits, the rest ``α·sign(w)`` with the STE."""

    def __init__(self, weight: Tensor, fraction: float):
        super().__init__()
        mask = salient_mask(weight, fraction)
        self.register_buffer("mask", mask)
        self.register_buffer("salient", torch.where(mask, weight.detach(), 0.0))

    def freeze(self, w: Tensor) -> QuantizedWeight:
        """Layout "partial-binary": 8-bit codes with a per-row scale where salient, ±1 times ``alpha`` elsewhere."""
        sal = quantize(self.salient, SALIENT_SPEC)
        sign, alpha = _binary_part(w, self.mask)
        codes = torch.where(self.mask, sal.codes.float(), sign).to(torch.int8)
        qt = QTensor(codes, sal.scale, torch.zeros_like(sal.scale), SALIENT_SPEC, w.shape)
        qw = QuantizedWeight.from_qtensor(qt)
        return QuantizedWeight(
            qw.codes,
            qw.scale,
            qw.zero,
            qw.g_idx,
            SALIENT_SPEC,
            "partial-binary",
            {"mask": self.mask.clone(), "alpha": alpha},
        )

    def forward(self, w: Tensor) -> Tensor:
        w_hat = self.freeze(w.detach()).dequantize().to(w.dtype)
        return straight_through(w, w_hat, ~self.mask)


@register
class PBLLMRecipe(Recipe):
    name = "pbllm"
    uses_group_size = False
    default_bits = (1, 16)

    def check_bits(self, w_bits: int, a_bits: int) -> None:
        require(w_bits in (1, 16), f"pbllm binarizes weights (w_bits 1) or leaves them (16), got {w_bits}")

    def weight_quantizer(self, weight, bits, cfg):
        return PartialBinaryWeightQuantizer(weight, cfg.salient_fraction)

    def act_quantizer(self, in_features, bits, cfg):
        return STEActQuantizer(act_spec(bits, None))
