"""Finding what to quantize in any HF causal LM (its decoder blocks and linear layers) and swapping them."""

from __future__ import annotations

from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from qscale.errors import QscaleError
from qscale.models.select import name_matches
from qscale.quant import QuantizedLinear, QuantizedWeight

LINEAR_TYPES = (nn.Linear, Conv1D)  # GPT-2 uses Conv1D: a linear layer with its weight stored [in, out]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks: the ``nn.ModuleList`` of same-class modules holding the most parameters.

    Finds ``model.layers`` (Llama), ``gpt_neox.layers`` (GPT-NeoX), ``transformer.h`` (GPT-2), ...
    without knowing the architecture.
    """
    best, best_size = None, 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and len({type(m) for m in mod}) == 1:
            size = sum(p.numel() for p in mod.parameters())
            if size > best_size:
                best, best_size = (name, mod), size
    if best is None:
        raise QscaleError(f"no list of decoder blocks found in {type(model).__name__}")
    return best


def quantizable(model: nn.Module, skip: tuple[str, ...]) -> dict[str, nn.Module]:
    """Linear layers to quantize, by qualified name, in module order.

    Embedding tables are never quantized (they are lookups, not matmuls, and no packed format holds them),
    and neither is a linear layer whose weight is shared with another module (a head tied to the
    embeddings): replacing it would untie the pair.
    """
    holders: dict[int, int] = {}
    for _, mod in model.named_modules(remove_duplicate=False):
        if isinstance(mod, (*LINEAR_TYPES, nn.Embedding)):
            holders[id(mod.weight)] = holders.get(id(mod.weight), 0) + 1
    return {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, LINEAR_TYPES)
        and not any(name_matches(p, name) for p in skip)
        and holders[id(mod.weight)] == 1
    }


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule called ``name``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def to_quantized_linear(model: nn.Module, name: str, qweight: QuantizedWeight) -> QuantizedLinear:
    """Replace the linear layer ``name`` by the ``QuantizedLinear`` of ``qweight`` (keeping its bias)."""
    old = model.get_submodule(name)
    new = QuantizedLinear(qweight, get_bias(old), name=name, source=type(old).__name__)
    replace_module(model, name, new)
    return new


def weight_param(module: nn.Module) -> Tensor:
    """A linear layer's ``weight`` parameter as stored (GPT-2's Conv1D: ``[in, out]``)."""
    weight = module.weight
    assert isinstance(weight, Tensor), f"{type(module).__name__}.weight is not a tensor"
    return weight


def get_weight(module: nn.Module) -> Tensor:
    """The weight as ``[out, in]`` (GPT-2's Conv1D stores it ``[in, out]``)."""
    weight = weight_param(module).data
    return weight.t() if isinstance(module, Conv1D) else weight


def get_bias(module: nn.Module) -> Tensor | None:
    """A linear layer's bias, or None."""
    bias = module.bias
    assert bias is None or isinstance(bias, Tensor), f"{type(module).__name__}.bias is not a tensor"
    return bias
