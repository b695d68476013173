"""Writing a quantized model folder: a model walk that streams tensors into safetensors shards, atomically.

Every format module turns one ``QuantizedLinear`` into its own tensors; everything else (embeddings, norms,
the head, biases of unquantized layers) is written as it is, cast to the export dtype. Tensors are produced
layer by layer and each goes to disk as it comes (``qscale.export.stream``), so the peak memory is the
model itself plus one layer's new tensors, never two copies of the model. The folder is written under a temporary name
and renamed when complete, with the tokenizer and generation files of the source folder copied beside it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qscale.errors import QscaleError, require
from qscale.export.stream import SafetensorsWriter
from qscale.quant import QuantizedLinear
from qscale.train.checkpoint import atomic_folder

AUX_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)
MAX_SHARD_BYTES = 2 * 1024**3
LayerTensors = Callable[[str, QuantizedLinear], dict[str, Tensor]]


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    """The model's ``QuantizedLinear`` modules by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def weight_only_problem(layer: QuantizedLinear) -> str | None:
    """Why a standard weight-only integer format (compressed-tensors, GPTQ) cannot hold ``layer``, or None."""
    if layer.layout != "uniform":
        return f"its {layer.layout} layout (PB-LLM / iFairy) has no such form"
    if layer.hadamard_group:
        return "it computes in a Hadamard-rotated basis (QuEST)"
    if layer.reassembled:
        return "its inputs are reassembled (QLLM's channel index tensors have no place in it)"
    if layer.act_quantizer is not None:
        return "its input activations are quantized by a QAT recipe (the format is weight-only)"
    if not bool(torch.equal(layer.weight_zero, layer.weight_zero.round())):
        return "its zero points are not integers (QuEST's half-integer grid)"
    return None


def model_tensors(model: nn.Module, layer_tensors: LayerTensors, dtype: torch.dtype) -> Iterator[tuple[str, Tensor]]:
    """``(key, tensor)`` of the exported state: quantized layers through ``layer_tensors``, the rest cast to
    ``dtype`` (floating tensors only). A tensor shared by several keys (tied embeddings) is written once,
    under its first key, as ``save_pretrained`` does."""
    layers = quantized_layers(model)
    require(bool(layers), "the model has no quantized linear layers: quantize it (qscale quantize) or convert it first")
    done: set[str] = set()
    seen: set[int] = set()
    for key, t in model.state_dict(keep_vars=False).items():
        owner = next((n for n in layers if key.startswith(n + ".")), None)
        if owner is not None:
            if owner not in done:
                done.add(owner)
                for k, v in layer_tensors(owner, layers[owner]).items():
                    yield f"{owner}.{k}", v.contiguous()
            continue
        if t.data_ptr() in seen and t.numel():
            continue
        seen.add(t.data_ptr())
        yield key, (t.to(dtype) if t.is_floating_point() else t).contiguous()


def write_model_folder(
    out: Path,
    tensors: Iterator[tuple[str, Tensor]],
    config: dict,
    source: Path | None,
    extra_json: dict[str, dict] | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    weights_name: str = "model",
) -> int:
    """Write ``tensors`` as safetensors shards plus ``config.json`` (and ``extra_json`` files) to ``out``.

    Returns the total bytes of the weight files. One file ``<weights_name>.safetensors`` when it fits a shard,
    else ``<weights_name>-0000k-of-0000n.safetensors`` with ``<weights_name>.safetensors.index.json``.
    """
    total = 0

    def write(tmp: Path) -> None:
        nonlocal total
        shards: list[list[str]] = []
        writer: SafetensorsWriter | None = None
        for key, t in tensors:
            nbytes = t.numel() * t.element_size()
            if writer is not None and writer.nbytes and writer.nbytes + nbytes > max_shard_bytes:
                writer.close()
                writer = None
            if writer is None:
                writer = SafetensorsWriter(tmp / f"shard-{len(shards):05d}.safetensors")
                shards.append([])
            writer.add(key, t)
            shards[-1].append(key)
            total += nbytes
        if writer is None:
            raise QscaleError("nothing to write")
        writer.close()
        _name_shards(tmp, shards, total, weights_name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        if source is not None:
            copy_aux_files(Path(source), tmp)

    atomic_folder(Path(out), write)
    return total


def copy_aux_files(source: Path, dest: Path) -> None:
    """Copy the tokenizer and generation files of ``source`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in AUX_FILES:
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, dest / name)


def _name_shards(folder: Path, shards: list[list[str]], total: int, stem: str) -> None:
    if len(shards) == 1:
        (folder / "shard-00000.safetensors").rename(folder / f"{stem}.safetensors")
        return
    weight_map = {}
    for i, keys in enumerate(shards):
        name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (folder / f"shard-{i:05d}.safetensors").rename(folder / name)
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def base_config(model: nn.Module, dtype: torch.dtype) -> dict:
    """The model's ``config.json`` content with the export dtype and no previous quantization config."""
    hf_config: Any = model.config  # a transformers PretrainedConfig (nn.Module types attributes as tensors)
    config = hf_config.to_dict()
    config.pop("quantization_config", None)
    name = str(dtype).removeprefix("torch.")
    config["torch_dtype"] = name
    config["dtype"] = name
    return config


def folder_bytes(path: Path) -> int:
    """Bytes of the weight files of a model folder."""
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))
