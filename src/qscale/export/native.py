"""qscale's own packed layout, for what compressed-tensors and GPTQ cannot express.

PB-LLM's partial binarization, QuEST's Hadamard rotation and half-integer zero points, QLLM's channel reassembly, and
weight-activation QAT recipes (``ste``/``lsq``/``quest``/``bitnet`` activation quantizers) are written here. A layer's
tensors are the ``QuantizedLinear`` state as it is: ``weight_packed`` (int32, the dense bitstream of unsigned codes
``q − qmin``, the compressed-tensors packing), ``weight_scale`` and ``weight_zero`` ``[out, n_groups]`` (float32),
``weight_g_idx`` (int32 ``[in]``), layout extras (``weight_mask`` bool, ``weight_alpha``), ``bias``, QLLM's reassembly
of the inputs (``input_src``, ``input_dst`` int32 ``[E]`` and ``input_coef`` float32 ``[E]``:
``x'_j = Σ_{e: dst_e = j} coef_e·x_{src_e}``, ``qscale.quant.reassembly``), and the activation quantizer's buffers
(``act_quantizer.*``). ``config.json`` carries ``quantization_config = {quant_method: "qscale", format: "qscale-packed",
version: 1, layers: {name: {bits, symmetric, granularity, group_size, grid, layout, in_features, out_features,
hadamard_group, source, reassembly, act}}}`` where ``reassembly`` says whether the ``input_*`` tensors are there (absent
= false) and ``act`` is the activation quantizer's description (or null). Only ``qscale.load_quantized`` reads it.

No other loader can mistake the folder for a plain model: ``config.json`` says ``model_type: "qscale_packed"``
(unknown to transformers, so ``AutoConfig``/``AutoModel*.from_pretrained`` and everything built on them raise)
and keeps the architecture's own type as ``qscale_model_type``; the weights are ``qscale-model.safetensors``
(or ``qscale-model-0000k-of-0000n.safetensors``), so a loader that takes the architecture from elsewhere
(``LlamaForCausalLM.from_pretrained``) finds no ``model.safetensors`` and raises too, instead of initialising the
quantized layers at random.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qscale.export.folder import quantized_layers
from qscale.quant import QuantizedLinear

FORMAT_VERSION = 1
MODEL_TYPE = "qscale_packed"
BASE_MODEL_TYPE_KEY = "qscale_model_type"
WEIGHTS_NAME = "qscale-model"


def layer_tensors(dtype: torch.dtype):
    """The per-layer tensor function: the layer's own state (scales stay float32; the bias in ``dtype``)."""

    def tensors(name: str, layer: QuantizedLinear) -> dict[str, Tensor]:
        out = dict(layer.state_dict())
        if layer.bias is not None:
            out["bias"] = layer.bias.to(dtype)
        return out

    return tensors


def layer_config(layer: QuantizedLinear) -> dict:
    """What ``load_quantized`` needs besides the tensors to rebuild the layer."""
    spec = layer.spec
    return {
        "bits": spec.bits,
        "symmetric": spec.symmetric,
        "granularity": spec.granularity,
        "group_size": spec.group_size,
        "grid": spec.grid,
        "layout": layer.layout,
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "hadamard_group": layer.hadamard_group,
        "source": layer.source,
        "extras": list(layer.extra_names),
        "reassembly": layer.reassembled,
        # the activation quantizers (qscale.qat) describe themselves; nn.Module types the method as a tensor
        "act": None if layer.act_quantizer is None else layer.act_quantizer.describe(),  # type: ignore[operator]
    }


def quantization_config(model: nn.Module) -> dict:
    """``quantization_config`` for ``config.json``: every quantized layer's description."""
    layers = quantized_layers(model)
    return {
        "quant_method": "qscale",
        "format": "qscale-packed",
        "version": FORMAT_VERSION,
        "layers": {name: layer_config(layer) for name, layer in layers.items()},
    }


def folder_config(config: dict) -> dict:
    """``config.json`` of a qscale folder: ``model_type`` replaced by :data:`MODEL_TYPE`, the original kept."""
    out = dict(config)
    out[BASE_MODEL_TYPE_KEY] = out.get("model_type")
    out["model_type"] = MODEL_TYPE
    return out


def model_config(config: dict) -> dict:
    """The architecture's own config from a folder's ``config.json`` (undoes :func:`folder_config`)."""
    out = dict(config)
    if out.get("model_type") == MODEL_TYPE:
        out["model_type"] = out.pop(BASE_MODEL_TYPE_KEY, None)
        if out["model_type"] is None:
            out.pop("model_type")
    return out
