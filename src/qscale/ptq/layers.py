"""Finding what to quantize in any HF causal LM: its decoder blocks and its weight matrices."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from qscale.errors import require

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
    require(best is not None, f"no list of decoder blocks found in {type(model).__name__}")
    return best


def is_skipped(name: str, module: nn.Module, skip: tuple[str, ...]) -> bool:
    """True if a skip pattern occurs in the module's qualified name or lowercased class name."""
    cls = type(module).__name__.lower()
    return any(p in name or p in cls for p in skip)


def quantizable(model: nn.Module, skip: tuple[str, ...]) -> dict[str, nn.Module]:
    """Linear layers and embeddings to quantize, by qualified name, in module order.

    A weight shared by several modules (tied embeddings) is listed once, under a linear layer if one
    holds it, and not at all if any module holding it is skipped.
    """
    holders: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (*LINEAR_TYPES, nn.Embedding)):
            holders.setdefault(id(mod.weight), []).append((name, mod))
    chosen = {}
    for group in holders.values():
        if any(is_skipped(n, m, skip) for n, m in group):
            continue
        linear = [(n, m) for n, m in group if isinstance(m, LINEAR_TYPES)]
        name, mod = (linear or group)[0]
        chosen[name] = mod
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return dict(sorted(chosen.items(), key=lambda kv: order[kv[0]]))


def get_weight(module: nn.Module) -> Tensor:
    """The weight as ``[out, in]`` (rows of an embedding table count as outputs)."""
    return module.weight.data.t() if isinstance(module, Conv1D) else module.weight.data


@torch.no_grad()
def set_weight(module: nn.Module, W: Tensor) -> None:
    """Overwrite the weight in place with ``W`` ``[out, in]``, keeping its dtype."""
    get_weight(module).copy_(W.to(module.weight.dtype))
