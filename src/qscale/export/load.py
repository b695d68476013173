"""``load_quantized``: read a compressed-tensors, GPTQ or qscale packed folder into ``QuantizedLinear`` layers.

The model is built from its ``config.json``; each quantized layer becomes a ``QuantizedLinear`` holding the
packed codes (dequantized on the fly), the other tensors are loaded as they are. Missing, unexpected,
misshapen or non-finite tensors are errors naming the tensor, never a silently random or NaN model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from qscale.errors import QscaleError, require
from qscale.export.native import model_config
from qscale.export.readers import READERS
from qscale.ptq.layers import replace_module
from qscale.quant import QuantizedLinear
from qscale.quant.switch import switch_bits


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of the folder's safetensors files (one file or an indexed set of shards)."""
    files = sorted(path.glob("*.safetensors"))
    require(bool(files), f"no .safetensors weights in {path}")
    tensors: dict[str, Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as reader:
                for key in reader.keys():
                    require(key not in tensors, f"tensor {key} appears in two weight files of {path}")
                    tensors[key] = reader.get_tensor(key)
        except QscaleError:
            raise
        except Exception as e:
            raise QscaleError(f"cannot read {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return tensors


def quantization_method(config: dict) -> str:
    """``quantization_config.quant_method`` of a folder's ``config.json`` (lower case; "" when absent)."""
    qcfg = config.get("quantization_config") or {}
    return str(qcfg.get("quant_method", "") if isinstance(qcfg, dict) else "").lower()


def _skeleton(path: Path, config: dict) -> nn.Module:
    cfg = model_config(config)  # a qscale folder's model_type is "qscale_packed"; the architecture's is kept
    cfg.pop("quantization_config", None)
    try:
        hf_config = AutoConfig.for_model(**cfg) if "model_type" in cfg else None
    except Exception as e:
        raise QscaleError(f"cannot read the model config of {path}: {str(e).splitlines()[0]}") from e
    require(hf_config is not None, f"config.json of {path} has no model_type")
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32, attn_implementation="sdpa")
    except Exception as e:
        raise QscaleError(f"cannot build the model of {path}: {str(e).splitlines()[0]}") from e
    finally:
        hf_logging.set_verbosity(level)
    return model


def load_quantized(path: str | Path, dtype: torch.dtype = torch.float32, bits: int | None = None) -> nn.Module:
    """The eval-mode model of a quantized folder; full-precision tensors cast to ``dtype`` (default fp32).

    ``bits``: serve a lower precision of a symmetric model by Double Rounding of its stored integer codes
    (``qscale.quant.switch``); None = as stored.
    """
    path = Path(path)
    require(path.is_dir(), f"model folder does not exist: {path}")
    require((path / "config.json").is_file(), f"not a model folder (no config.json): {path}")
    try:
        config = json.loads((path / "config.json").read_text())
    except ValueError as e:
        raise QscaleError(f"config.json of {path} is not valid JSON: {e}") from None
    qcfg = config.get("quantization_config") or {}
    method = quantization_method(config)
    require(
        method in READERS,
        f"{path} is not a quantized folder qscale reads (quant_method {method or 'missing'!r}; "
        f"known: {', '.join(READERS)})",
    )
    tensors = read_tensors(path)
    model = _skeleton(path, config)
    layers = READERS[method](model, qcfg, tensors)
    if bits is not None:
        layers = {name: _switched(layer, bits) for name, layer in layers.items()}
    for name, layer in layers.items():
        replace_module(model, name, layer)
    _load_rest(model, tensors, set(layers), path, dtype)
    for layer in layers.values():  # activation quantizers that hook the model (EdgeQAT's attention)
        attach = getattr(layer.act_quantizer, "attach", None)
        if attach is not None:
            attach(model)
    return model.eval()


def _switched(layer: QuantizedLinear, bits: int) -> QuantizedLinear:
    qw = switch_bits(layer.qweight(), bits)
    return QuantizedLinear(
        qw, layer.bias, layer.act_quantizer, layer.hadamard_group, layer.name, layer.source, layer.reassembly()
    )


def _load_rest(model: nn.Module, tensors: dict[str, Tensor], taken: set[str], path: Path, dtype: torch.dtype) -> None:
    """Load the remaining tensors; every model parameter/buffer must come from the file (or a tie)."""
    rest = {}
    for key, t in tensors.items():
        if any(key.startswith(n + ".") for n in taken):
            continue
        if t.is_floating_point():
            require(bool(torch.isfinite(t).all()), f"tensor {key} in {path} holds NaN or Inf")
            t = t.to(dtype)
        rest[key] = t
    state = model.state_dict()
    expected = {k for k in state if not any(k.startswith(n + ".") for n in taken)}
    unexpected = sorted(set(rest) - expected)
    if unexpected:
        raise QscaleError(f"{path} has {len(unexpected)} tensor(s) the model does not use, e.g. {unexpected[0]}")
    for key in rest:
        require(
            state[key].shape == rest[key].shape,
            f"tensor {key} in {path} has shape {tuple(rest[key].shape)}, the model needs {tuple(state[key].shape)}",
        )
    model.load_state_dict(rest, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # type: ignore[operator]  # a transformers method (nn.Module types it as a tensor)
    loaded = {t.data_ptr() for k, t in model.state_dict().items() if k in rest}
    missing = sorted(k for k in expected - set(rest) if model.state_dict()[k].data_ptr() not in loaded)
    if missing:
        raise QscaleError(f"{path} lacks {len(missing)} weight(s) of the model, e.g. {missing[0]}")
    for layer in model.modules():
        if isinstance(layer, QuantizedLinear) and layer.bias is not None:
            layer.bias.data = layer.bias.data.to(dtype)
