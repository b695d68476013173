"""Registry of QAT recipes by name.

A recipe says how to build the two quantizers of one ``QuantLinear`` (its weight quantizer and its
input-activation quantizer) and whether the layer computes in a Hadamard-rotated basis (QuEST).
Recipes register themselves with ``@register`` when their module is imported (``qscale.qat`` imports all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from qscale.errors import require
from qscale.qat.hooks import TrainHooks

if TYPE_CHECKING:
    from qscale.qat.config import QATRecipeConfig
    from qscale.qat.linear import ActQuantizer, WeightQuantizer


class Recipe:
    """How one recipe quantizes a linear layer; subclasses set ``name``/``default_bits`` and the builders."""

    name: ClassVar[str]
    default_bits: ClassVar[tuple[int, int]]  # (w_bits, a_bits) when the config leaves them None
    hadamard: ClassVar[bool] = False  # rotate input groups (and weights) before quantizing
    uses_group_size: ClassVar[bool] = True  # weight scales per group of ``cfg.group_size`` columns
    trains_quantizers_only: ClassVar[bool] = False  # freeze every other parameter (low-rank QAT)
    options_type: ClassVar[type | None] = None  # dataclass of the recipe's own options (``cfg.options``)
    needs_teacher: ClassVar[bool] = False  # ``qat_finetune`` keeps a full-precision copy for ``hooks``

    def check_bits(self, w_bits: int, a_bits: int) -> None:
        """Raise ``QscaleError`` for bit widths this recipe cannot represent."""

    def weight_quantizer(self, weight: Tensor, bits: int, cfg: QATRecipeConfig) -> WeightQuantizer:
        raise NotImplementedError

    def act_quantizer(self, in_features: int, bits: int, cfg: QATRecipeConfig) -> ActQuantizer:
        raise NotImplementedError

    def hooks(self, model: nn.Module, cfg: QATRecipeConfig, teacher: nn.Module | None) -> TrainHooks:
        """The training hooks of the prepared ``model`` (``qscale.qat.hooks``); the plain step by default."""
        return TrainHooks()


RECIPES: dict[str, Recipe] = {}


def register(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: add an instance of ``cls`` to ``RECIPES`` under ``cls.name``."""
    require(cls.name not in RECIPES, f"QAT recipe {cls.name!r} is registered twice")
    RECIPES[cls.name] = cls()
    return cls


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``; ``QscaleError`` if unknown."""
    require(name in RECIPES, f"unknown QAT recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
