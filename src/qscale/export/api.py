"""``export_model``: one entry point writing a quantized model in a packed format, and the format registry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qscale.errors import QscaleError, require
from qscale.export import compressed_tensors, gptq, native
from qscale.export.folder import base_config, model_tensors, write_model_folder
from qscale.qat.linear import QuantLinear

FORMATS = {"compressed-tensors": compressed_tensors, "gptq": gptq, "qscale": native}


@dataclass(frozen=True)
class ExportResult:
    """Where a format was written and the bytes of its weight files."""

    format: str
    path: Path
    nbytes: int


def export_model(
    model: nn.Module, out: str | Path, fmt: str, source: str | Path | None = None, dtype: torch.dtype | None = None
) -> ExportResult:
    """Write ``model`` (its ``QuantizedLinear`` layers packed) to ``out`` in format ``fmt``.

    ``source``: the folder the model came from (its tokenizer and generation files are copied).
    ``dtype``: of the full-precision tensors and of compressed-tensors scales (default: the model's).
    Raises ``QscaleError`` for a layer the format cannot hold exactly, naming it and the way out.
    """
    require(fmt in FORMATS, f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    w16 = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    if w16:
        raise QscaleError(
            f"layer {w16[0]} is not converted or has only its input quantized (W16Ax): exporters "
            "write layers with integer weights"
        )
    dtype = dtype or next(p.dtype for p in model.parameters() if p.is_floating_point())
    module = FORMATS[fmt]
    config = base_config(model, dtype)
    config["quantization_config"] = module.quantization_config(model)
    extra = {"quantize_config.json": config["quantization_config"]} if fmt == "gptq" else None
    weights_name = "model"
    if fmt == "qscale":  # a folder no other loader can mistake for a plain model (qscale.export.native)
        config, weights_name = native.folder_config(config), native.WEIGHTS_NAME
    nbytes = write_model_folder(
        Path(out),
        model_tensors(model, module.layer_tensors(dtype), dtype),
        config,
        None if source is None else Path(source),
        extra,
        weights_name=weights_name,
    )
    return ExportResult(fmt, Path(out), nbytes)
