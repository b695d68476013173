"""GPTQ v1 checkpoint layout (``checkpoint_format: gptq``, AutoGPTQ/GPTQModel) from ``QuantizedLinear`` layers.

Per layer (SPEC §6): ``qweight`` int32 ``[in·b/32, out]`` (unsigned codes packed along the input dimension:
the transpose of compressed-tensors' words), ``qzeros`` int32 ``[n_groups, out·b/32]`` holding ``zero − 1``
(the v1 convention; symmetric zero = 2^(b−1)), ``scales`` fp16 ``[n_groups, out]``, ``g_idx`` int32 ``[in]``.
2, 3, 4 and 8 bits (5–7 need GPTQModel's planar layout); one bit width and group size for the whole model.
Scales are stored in fp16, as the format has them: the folder dequantizes to the in-memory weights with
scales rounded to fp16.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qscale._version import __version__
from qscale.errors import QscaleError, require
from qscale.export.folder import quantized_layers, weight_only_problem
from qscale.ptq.layers import LINEAR_TYPES, find_blocks
from qscale.quant import QuantizedLinear, pack_rows

GPTQ_BITS = (2, 3, 4, 8)


def check_layer(name: str, layer: QuantizedLinear) -> None:
    """Raise ``QscaleError`` unless the GPTQ v1 layout can hold this layer exactly."""
    b = layer.spec.bits
    why = weight_only_problem(layer)
    if why is None and b not in GPTQ_BITS:
        why = f"GPTQ v1 holds {', '.join(map(str, GPTQ_BITS))} bits, not {b}"
    elif why is None and ((layer.in_features * b) % 32 or (b == 3 and layer.in_features % 32)):
        why = f"{layer.in_features} input columns do not fill whole 32-bit words at {b} bits"
    elif why is None and ((layer.out_features * b) % 32 or (b == 3 and layer.out_features % 32)):
        why = f"{layer.out_features} output rows do not fill whole 32-bit zero-point words at {b} bits"
    if why:
        raise QscaleError(f"cannot export layer {name} to GPTQ: {why}; use --format compressed-tensors or qscale")


def _unsigned_zero(layer: QuantizedLinear) -> Tensor:
    """Zero points on the unsigned code scale ``[out, n_groups]`` (symmetric: 2^(b−1))."""
    return layer.weight_zero.to(torch.int64) - layer.spec.qmin


def layer_tensors(dtype: torch.dtype):
    """The per-layer tensor function for :func:`qscale.export.folder.model_tensors`."""

    def tensors(name: str, layer: QuantizedLinear) -> dict[str, Tensor]:
        b = layer.spec.bits
        qw = layer.qweight()
        unsigned = qw.codes.to(torch.int64) - layer.spec.qmin  # [out, in]
        zeros_v1 = (_unsigned_zero(layer) - 1) & ((1 << b) - 1)  # zero − 1, wrapped to b bits
        out = {
            "qweight": pack_rows(unsigned, b).t().contiguous(),
            "qzeros": pack_rows(zeros_v1.t().contiguous(), b),
            "scales": layer.weight_scale.t().to(torch.float16).contiguous(),
            "g_idx": layer.weight_g_idx.to(torch.int32),
        }
        if layer.bias is not None:
            out["bias"] = layer.bias.to(dtype)
        return out

    return tensors


def quantization_config(model: nn.Module) -> dict:
    """``quantization_config`` (also written as ``quantize_config.json``); raises for what GPTQ cannot hold."""
    layers = quantized_layers(model)
    for name, layer in layers.items():
        check_layer(name, layer)
    specs = {(m.spec.bits, m.spec.symmetric, m.spec.granularity, m.spec.group_size) for m in layers.values()}
    require(
        len(specs) == 1,
        "a GPTQ checkpoint has one bit width and group size for all layers, this model has "
        f"{len(specs)}: use --format compressed-tensors",
    )
    blocks_name, _ = find_blocks(model)
    left = [n for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES) and n.startswith(blocks_name + ".")]
    if left:
        raise QscaleError(
            f"GPTQ loaders quantize every linear layer of the decoder blocks, but {left[0]} is not "
            "quantized: use --format compressed-tensors"
        )
    bits, sym, gran, G = specs.pop()
    return {
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "bits": bits,
        "group_size": G if gran == "group" else -1,
        "desc_act": False,
        "static_groups": False,
        "sym": sym,
        "true_sequential": True,
        "pack_dtype": "int32",
        "lm_head": "lm_head" in layers,
        "meta": {"quantizer": [f"qscale:{__version__}"]},
    }
