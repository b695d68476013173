"""PTQ methods by name, and the one entry point that dispatches to them.

A method registers its model-level function with ``@register("name")`` in its own module (``qscale.ptq``
imports them all), so the registry imports no method and ``PTQConfig`` can validate names against it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor, nn

from qscale.errors import require
from qscale.quant import QuantizedLinear
from qscale.quant.ste import STEActQuantizer, act_spec

if TYPE_CHECKING:  # annotations only: the config imports this module to validate method names
    from qscale.ptq.config import PTQConfig

MethodFn = Callable[[nn.Module, "PTQConfig", Tensor | None, bool], dict]
PTQ_METHODS: dict[str, MethodFn] = {}


def register(name: str) -> Callable[[MethodFn], MethodFn]:
    """Decorator: add a model-level PTQ function to ``PTQ_METHODS`` under ``name``."""

    def add(fn: MethodFn) -> MethodFn:
        require(name not in PTQ_METHODS, f"PTQ method {name!r} is registered twice")
        PTQ_METHODS[name] = fn
        return fn

    return add


def quantize_model(model: nn.Module, cfg: PTQConfig, calib: Tensor | None, progress: bool = False) -> dict:
    """Quantize ``model`` in place with ``cfg.method``: each selected linear layer becomes a ``QuantizedLinear``.

    ``calib``: token windows ``[n, T]`` from the TRAIN split (needed by "gptq", unused by "rtn").
    With ``cfg.act_bits < 16`` every quantized layer also gets the dynamic per-token absmax activation
    quantizer at that width ("ste"-style symmetric absmax RTN activations; "qllm" puts on its own, the asymmetric
    per-token quantizer it calibrated with, and keeps it).
    Returns per-layer stats keyed by qualified module name.
    """
    stats = PTQ_METHODS[cfg.method](model, cfg, calib, progress)
    if cfg.act_bits != 16:
        for name in stats:
            layer = model.get_submodule(name)
            if isinstance(layer, QuantizedLinear) and layer.act_quantizer is None:
                layer.act_quantizer = STEActQuantizer(act_spec(cfg.act_bits, None))
    return stats
