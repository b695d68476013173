"""``prepare``: swap selected linear layers for ``QuantLinear``; ``convert``: turn them into ``QuantizedLinear``.

Selection and per-layer bit widths come from ``QATRecipeConfig`` name patterns (mixed precision). The
output head (``get_output_embeddings()``) and layers matching ``cfg.exclude`` (by default ``*lm_head``
and ``*embed*``) stay in full precision; embeddings are not linear layers and are never touched.
Handles ``nn.Linear`` and the GPT-2 style ``transformers.pytorch_utils.Conv1D`` (weight ``[in, out]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from qscale.errors import require
from qscale.ptq.layers import replace_module
from qscale.qat.config import UNQUANTIZED, QATRecipeConfig, name_matches
from qscale.qat.linear import QuantLinear
from qscale.qat.registry import get_recipe
from qscale.quant.hadamard import hadamard_group_size


@dataclass(frozen=True)
class LayerPlan:
    """Bit widths of one selected layer (16 = that operand stays in full precision)."""

    w_bits: int
    a_bits: int


def _head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


def plan_layers(model: nn.Module, cfg: QATRecipeConfig) -> dict[str, LayerPlan]:
    """Which linear layers ``prepare`` quantizes and at which (w_bits, a_bits), by qualified name.

    Raises ``QscaleError`` if a rule matches no candidate layer (a typo would silently do nothing).
    """
    recipe = get_recipe(cfg.recipe)
    head = _head(model)
    plans: dict[str, LayerPlan] = {}
    used = [False] * len(cfg.rules)
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Linear, Conv1D)) or mod is head:
            continue
        if any(name_matches(p, name) for p in cfg.exclude):
            continue
        w_bits, a_bits = cfg.default_bits
        skip = False
        for i, rule in enumerate(cfg.rules):
            if rule.matches(name):
                used[i] = True
                w_bits = w_bits if rule.w_bits is None else rule.w_bits
                a_bits = a_bits if rule.a_bits is None else rule.a_bits
                skip = skip or rule.skip
        if skip or (w_bits == UNQUANTIZED and a_bits == UNQUANTIZED):
            continue
        recipe.check_bits(w_bits, a_bits)
        plans[name] = LayerPlan(w_bits, a_bits)
    for rule, hit in zip(cfg.rules, used, strict=True):
        require(hit, f"layer rule {rule.pattern!r} matches no quantizable linear layer")
    return plans


def prepare(model: nn.Module, cfg: QATRecipeConfig) -> nn.Module:
    """Replace the planned linear layers of ``model`` (in place) by ``QuantLinear``; returns ``model``.

    Call before building the optimizer: weights and biases keep their ``Parameter`` objects (except for
    ``Conv1D``, whose weight is transposed into a new parameter), and quantizers may add parameters.
    """
    require(not any(isinstance(m, QuantLinear) for m in model.modules()), "model is already prepared for QAT")
    plans = plan_layers(model, cfg)
    require(plans, f"no linear layer selected for QAT by {cfg.label} (check exclude and rules)")
    if get_recipe(cfg.recipe).trains_quantizers_only:  # low-rank QAT: only the quantizers' factors and scales train
        model.requires_grad_(False)
    prepare_layers(model, cfg, plans)
    return model


def prepare_layers(model: nn.Module, cfg: QATRecipeConfig, plans: dict[str, LayerPlan]) -> None:
    """Replace the named linear layers (``plan_layers`` entries) by ``QuantLinear`` (block-wise recipes
    prepare one block at a time)."""
    recipe = get_recipe(cfg.recipe)
    for name, plan in plans.items():
        mod = model.get_submodule(name)
        require(bool(torch.isfinite(mod.weight).all()), f"layer {name}: weight holds NaN or Inf")
        weight = mod.weight
        if isinstance(mod, Conv1D):
            weight = nn.Parameter(weight.detach().t().contiguous(), requires_grad=weight.requires_grad)
        in_features = weight.shape[1]
        hadamard = hadamard_group_size(in_features) if recipe.hadamard else 0
        wq = None if plan.w_bits == UNQUANTIZED else recipe.weight_quantizer(weight, plan.w_bits, cfg)
        aq = None if plan.a_bits == UNQUANTIZED else recipe.act_quantizer(in_features, plan.a_bits, cfg)
        for q in (wq, aq):
            if q is not None:
                q.to(device=weight.device)
        layer = QuantLinear(weight, mod.bias, wq, aq, hadamard, name=name, source=type(mod).__name__)
        replace_module(model, name, layer)


def quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    """The ``QuantLinear`` modules of a prepared (or converted) model, by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def convert(model: nn.Module) -> nn.Module:
    """Replace every ``QuantLinear`` by its ``QuantizedLinear`` (packed codes + scales, same outputs), in place.

    This is the representation PTQ produces; exporters and ``load_quantized`` read it.
    """
    layers = quant_layers(model)
    require(layers, "model has no QuantLinear layers: call prepare() first")
    for name, layer in layers.items():
        replace_module(model, name, layer.to_quantized(name))
    return model
