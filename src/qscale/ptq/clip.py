"""The clipping range of a weight quantizer searched by error, BRECQ's ``scale_method='mse'``.

BRECQ (Li et al. 2021, arXiv 2102.05426; code github:yhhhli/BRECQ, ``quant/quant_layer.py``
``UniformAffineQuantizer.init_quantization_scale``) and its AdaRound initialisation do not take the weight's
absolute maximum as the range: per output channel they try the range shrunk by ``α = 1 − 0.01·i``,
``i = 0..79`` (``[α·min, α·max]``), quantize round-to-nearest, and keep the first ``α`` of least
``Σ |w − ŵ|^2.4`` (the L_p norm of LAPQ, arXiv 1911.07190). At 2–3 bits this clips the few largest weights
and halves the step of the rest, which absmax cannot. Here the search runs per scale of the spec (row, group
or tensor) on the spec's grid: asymmetric ``[α·lo, α·hi]`` (``lo = min(w, 0)``, ``hi = max(w, 0)``; BRECQ uses
``min(w)``/``max(w)``, the same whenever a row holds both signs), symmetric ``α·absmax`` on the full or
restricted grid of ``qscale.quant.core``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qscale.quant import QuantSpec, compute_qparams, grid_codes, grouped

SHRINKS = 80  # α = 1 − 0.01·i, i = 0..79 (BRECQ)
P_NORM = 2.4  # the score's L_p norm (BRECQ, after LAPQ)


@torch.no_grad()
def mse_qparams(w: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Scale and zero (grouped-view shapes, as ``compute_qparams``) of least ``Σ|w − ŵ|^2.4`` per scale."""
    w = w.float()
    wg = grouped(w, spec)

    def candidate(i: int) -> tuple[Tensor, Tensor, Tensor]:
        s, z = compute_qparams(w * (1.0 - 0.01 * i), spec)  # the spec's own range formula on a shrunk copy
        safe = torch.where(s > 0, s, torch.ones_like(s))
        return ((grid_codes(wg, safe, z, spec) - z) * s - wg).abs().pow(P_NORM).sum(-1, keepdim=True), s, z

    best_err, best_s, best_z = candidate(0)
    for i in range(1, SHRINKS):
        err, s, z = candidate(i)
        better = err < best_err  # strict: the first (least clipped) best wins, as in BRECQ
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z
