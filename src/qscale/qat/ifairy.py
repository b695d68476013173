"""``ifairy``: complex 2-bit weights in {±1, ±i} (iFairy, 2025; Fairy2i, arXiv 2512.02901; SPEC §6).

The Llama (any model with even linear widths) is read as complex-valued: every hidden vector is complex
(``z = x[:n/2] + i·x[n/2:]``) and every selected linear layer is a widely-linear complex map ``y = U z + V z̄``,
exactly the real layer (Fairy2i's conversion of a real checkpoint, ``qscale.quant.phase``). QAT quantizes
``U`` and ``V`` with iFairy's PhaseQuant (nearest fourth root of unity in phase, per-matrix scales
``s_re``, ``s_im``) in two residual stages, with the straight-through estimator (the maps ``W ↔ (U, V)`` are
linear and inverse, so the identity gradient in ``(U, V)`` is the identity in ``W``). Storage: ``out·in``
2-bit codes per layer plus 8 scales — the same as BitNet b1.58's 2-bit packing, the equal-storage
comparison. Activations: absmax per token to ``a_bits`` (8 by default, as BitNet). Frozen form: a
"complex-phase" ``QuantizedWeight`` (qscale packed format only); ``qscale.quant.phase.mulfree_linear`` runs
it with additions and real/imaginary swaps.

Forward values and gradients agree with the authors' two-stage ``QATLinearComplexPhaseV2`` (PKULab1806/Fairy2i-W2,
``model_module/qat_modules.py``; tests/qat/test_ifairy.py). Their scales are clamped at 1e-6 and a phase exactly on
a boundary (|Re| = |Im|) goes to the ±i side there, to ±1 here: both only at measure-zero or degenerate inputs.
Their QAT layer quantizes no activations (``a_bits=16`` reproduces it); the default A8 is BitNet b1.58's, for the
equal-storage comparison with the ``bitnet`` recipe.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qscale.errors import require
from qscale.qat.linear import WeightQuantizer
from qscale.qat.registry import Recipe, register
from qscale.qat.ste import STEActQuantizer, act_spec, straight_through
from qscale.quant import QuantizedWeight, QuantSpec
from qscale.quant.phase import check_even, dequantize_layout, pack_layout

PHASE_SPEC = QuantSpec(2, symmetric=False, granularity="tensor", group_size=None)  # codes 0..3


class PhaseWeightQuantizer(WeightQuantizer):
    """Two-stage PhaseQuant of the widely-linear ``(U, V)`` of the weight, with the STE."""

    def forward(self, w: Tensor) -> Tensor:
        codes, scale = pack_layout(w.detach())
        return straight_through(w, dequantize_layout(codes, scale).to(w.dtype))

    def freeze(self, w: Tensor) -> QuantizedWeight:
        codes, scale = pack_layout(w)
        out = w.shape[0]
        return QuantizedWeight(
            codes,
            torch.ones(out, 1),
            torch.zeros(out, 1),
            torch.zeros(w.shape[1], dtype=torch.int32),
            PHASE_SPEC,
            "complex-phase",
            {"phase_scale": scale},
        )


@register
class IFairyRecipe(Recipe):
    name = "ifairy"
    uses_group_size = False
    default_bits = (2, 8)

    def check_bits(self, w_bits: int, a_bits: int) -> None:
        require(
            w_bits in (2, 16), f"ifairy weights are two 2-bit phase stages (w_bits 2) or unquantized (16), got {w_bits}"
        )

    def weight_quantizer(self, weight, bits, cfg):
        check_even(*weight.shape)
        return PhaseWeightQuantizer()

    def act_quantizer(self, in_features, bits, cfg):
        return STEActQuantizer(act_spec(bits, None))
