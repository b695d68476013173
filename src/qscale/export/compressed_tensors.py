"""compressed-tensors ``pack-quantized`` (0.20.0) from ``QuantizedLinear`` layers (SPEC §6).

Per layer: ``weight_packed`` int32 ``[out, ceil(in·b/32)]`` — our packed words as they are (signed codes
+ 2^(b−1), i.e. unsigned codes, in the dense bitstream), ``weight_scale`` in the export dtype
(``[out, in/G]`` group, ``[out, 1]`` channel, ``[1]`` tensor), ``weight_shape`` int64 ``[2]`` and, only when
asymmetric, ``weight_zero_point`` (signed zero ``z − 2^(b−1)``, packed along dim 0). The codes are never
re-derived from floats (the library's own ``compress()`` re-quantizes and gets 8-bit bf16 codes wrong).
Config: one config group per distinct weight scheme, ``ignore`` for every unquantized linear layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qscale.errors import QscaleError
from qscale.export.folder import quantized_layers, weight_only_problem
from qscale.ptq.layers import LINEAR_TYPES
from qscale.quant import QuantizedLinear, pack_rows

CT_VERSION = "0.20.0"


def check_layer(name: str, layer: QuantizedLinear) -> None:
    """Raise ``QscaleError`` unless compressed-tensors can hold this layer exactly."""
    spec = layer.spec
    why = weight_only_problem(layer)
    if layer.source == "Conv1D":
        why = "compressed-tensors only replaces nn.Linear modules and GPT-2 style Conv1D layers are not"
    elif why is None and spec.bits < 2:
        why = "compressed-tensors packs 2..8-bit integers here"
    elif why is None and spec.granularity == "group" and layer.in_features % spec.G:
        why = f"its {layer.in_features} input columns are not a multiple of the group size {spec.group_size}"
    if why is None and not layer.qweight().contiguous_groups:
        why = "its groups are not contiguous (compressed-tensors 0.20 has no g_idx)"
    if why:
        alt = "gptq or qscale" if layer.source == "Conv1D" else "qscale"
        raise QscaleError(f"cannot export layer {name} to compressed-tensors: {why}; use --format {alt}")


def layer_tensors(dtype: torch.dtype):
    """The per-layer tensor function for :func:`qscale.export.folder.model_tensors`."""

    def tensors(name: str, layer: QuantizedLinear) -> dict[str, Tensor]:
        spec = layer.spec
        scale = layer.weight_scale
        if spec.granularity == "tensor":
            scale = scale[:1, 0]
        out = {
            "weight_packed": layer.weight_packed,
            "weight_scale": scale.to(dtype),
            "weight_shape": torch.tensor([layer.out_features, layer.in_features], dtype=torch.int64),
        }
        if not spec.symmetric:
            z = layer.weight_zero.to(torch.int64)  # unsigned zero = signed zero + 2^(b-1): the packed form
            out["weight_zero_point"] = pack_rows(z.t().contiguous(), spec.bits).t().contiguous()
        if layer.bias is not None:
            out["bias"] = layer.bias.to(dtype)
        return out

    return tensors


def _weights_args(layer: QuantizedLinear) -> dict:
    spec = layer.spec
    strategy = {"group": "group", "channel": "channel", "tensor": "tensor"}[spec.granularity]
    return {
        "num_bits": spec.bits,
        "type": "int",
        "symmetric": spec.symmetric,
        "strategy": strategy,
        "group_size": spec.group_size if strategy == "group" else None,
        "dynamic": False,
        "actorder": None,
        "block_structure": None,
        "observer": "minmax",
        "observer_kwargs": {},
    }


def quantization_config(model: nn.Module) -> dict:
    """``quantization_config`` for ``config.json``; raises for layers the format cannot hold."""
    layers = quantized_layers(model)
    for name, layer in layers.items():
        check_layer(name, layer)
    schemes: dict[str, tuple[dict, list[str]]] = {}
    for name, layer in layers.items():
        args = _weights_args(layer)
        schemes.setdefault(repr(sorted(args.items())), (args, []))[1].append(name)
    ignore = [n for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)]
    one = len(schemes) == 1
    groups = {}
    for i, (args, names) in enumerate(schemes.values()):
        groups[f"group_{i}"] = {
            "targets": ["Linear"] if one else names,
            "weights": args,
            "input_activations": None,
            "output_activations": None,
            "format": "pack-quantized",
        }
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": ignore,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
        "version": CT_VERSION,
    }
