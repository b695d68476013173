"""PTQ methods by name, and the one entry point that dispatches to them."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from qscale.ptq.config import PTQConfig
from qscale.ptq.learned_round import learned_round_model
from qscale.ptq.qllm import qllm_model
from qscale.ptq.rtn import rtn_model
from qscale.ptq.sequential import gptq_model
from qscale.quant import QuantizedLinear
from qscale.quant.ste import STEActQuantizer, act_spec

PTQ_METHODS: dict[str, Callable[[nn.Module, PTQConfig, Tensor | None, bool], dict]] = {
    "rtn": rtn_model,
    "gptq": gptq_model,
    "learned-round": learned_round_model,
    "qllm": qllm_model,
}


def quantize_model(model: nn.Module, cfg: PTQConfig, calib: Tensor | None, progress: bool = False) -> dict:
    """Quantize ``model`` in place with ``cfg.method``: each selected linear layer becomes a ``QuantizedLinear``.

    ``calib``: token windows ``[n, T]`` from the TRAIN split (needed by "gptq", unused by "rtn").
    With ``cfg.act_bits < 16`` every quantized layer also gets the dynamic per-token absmax activation
    quantizer at that width (for "qllm" the one it calibrated with; for the others "ste"-style RTN activations).
    Returns per-layer stats keyed by qualified module name.
    """
    stats = PTQ_METHODS[cfg.method](model, cfg, calib, progress)
    if cfg.act_bits != 16:
        for name in stats:
            layer = model.get_submodule(name)
            if isinstance(layer, QuantizedLinear):
                layer.act_quantizer = STEActQuantizer(act_spec(cfg.act_bits, None))
    return stats
