"""PTQ methods by name, and the one entry point that dispatches to them."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from qscale.ptq.config import PTQConfig
from qscale.ptq.rtn import rtn_model
from qscale.ptq.sequential import gptq_model

PTQ_METHODS: dict[str, Callable[[nn.Module, PTQConfig, Tensor | None, bool], dict]] = {
    "rtn": rtn_model,
    "gptq": gptq_model,
}


def quantize_model(model: nn.Module, cfg: PTQConfig, calib: Tensor | None, progress: bool = False) -> dict:
    """Quantize ``model`` in place with ``cfg.method``: each selected linear layer becomes a ``QuantizedLinear``.

    ``calib``: token windows ``[n, T]`` from the TRAIN split (needed by "gptq", unused by "rtn").
    Returns per-layer stats keyed by qualified module name.
    """
    return PTQ_METHODS[cfg.method](model, cfg, calib, progress)
