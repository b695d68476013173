"""Round-to-nearest PTQ: every selected linear layer becomes the ``QuantizedLinear`` of ``quantize(W)`` (SPEC §6)."""

from __future__ import annotations

import time

import torch
from rich.progress import track
from torch import Tensor, nn

from qscale.errors import QscaleError
from qscale.ptq.config import PTQConfig
from qscale.ptq.layers import get_weight, quantizable, to_quantized_linear
from qscale.ptq.registry import register
from qscale.quant import QuantizedWeight, quantize


def weight_stats(W: Tensor, Q: Tensor, seconds: float) -> dict:
    """Shape, time and relative weight error ``||W - Q|| / ||W||`` of one quantized layer."""
    return {
        "shape": list(W.shape),
        "seconds": seconds,
        "weight_rel_err": float((W - Q).norm() / W.norm().clamp_min(1e-30)),
    }


def rtn_weight(name: str, W: Tensor, cfg: PTQConfig) -> QuantizedWeight:
    """``quantize(W, cfg.spec)`` as a ``QuantizedWeight``; non-finite weights are an error naming the layer."""
    try:
        return QuantizedWeight.from_qtensor(quantize(W, cfg.spec))
    except QscaleError as e:
        raise QscaleError(f"layer {name}: weight: {e}") from None


@register("rtn")
@torch.no_grad()
def rtn_model(model: nn.Module, cfg: PTQConfig, calib: Tensor | None = None, progress: bool = False) -> dict:
    """Quantize every linear layer not skipped (calibration is not used); per-layer stats."""
    stats = {}
    for name, mod in track(
        list(quantizable(model, cfg.skip).items()), description="RTN layers", disable=not progress, transient=True
    ):
        t0 = time.perf_counter()
        W = get_weight(mod).float()
        qw = rtn_weight(name, W, cfg)
        to_quantized_linear(model, name, qw)
        stats[name] = weight_stats(W, qw.dequantize(), time.perf_counter() - t0)
    return stats
