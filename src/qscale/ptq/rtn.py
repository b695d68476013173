"""Round-to-nearest PTQ: every selected weight replaced by ``fake_quantize(W)`` (SPEC §6)."""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from qscale.ptq.config import PTQConfig
from qscale.ptq.layers import get_weight, quantizable, set_weight
from qscale.quant import fake_quantize


def weight_stats(W: Tensor, Q: Tensor, seconds: float) -> dict:
    """Shape, time and relative weight error ``||W - Q|| / ||W||`` of one quantized layer."""
    return {
        "shape": list(W.shape),
        "seconds": seconds,
        "weight_rel_err": float((W - Q).norm() / W.norm().clamp_min(1e-30)),
    }


@torch.no_grad()
def rtn_model(model: nn.Module, cfg: PTQConfig, calib: Tensor | None = None, progress: bool = False) -> dict:
    """Quantize in place every weight not skipped (calibration is not used); per-layer stats."""
    stats = {}
    for name, mod in quantizable(model, cfg.skip).items():
        t0 = time.perf_counter()
        W = get_weight(mod).float()
        Q = fake_quantize(W, cfg.spec)
        set_weight(mod, Q)
        stats[name] = weight_stats(W, Q, time.perf_counter() - t0)
    return stats
