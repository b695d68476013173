"""qscale.qat: quantization-aware training — quantized linear layers, recipes, mixed precision.

from qscale.qat import QATRecipeConfig, LayerRule, prepare, convert
cfg = QATRecipeConfig("lsq", w_bits=4, a_bits=4, group_size=128,
                      rules=(LayerRule("*.down_proj", a_bits=8),))
prepare(model, cfg)      # nn.Linear -> QuantLinear (train as usual, or use qat_finetune)
convert(model)           # freeze to integer codes + scales (buffers), same logits
"""

from qscale.qat import (  # noqa: F401  (register the recipes)
    bitnet,
    doublerounding,
    edgeqat,
    efficientdm,
    efficientqat,
    gaqat,
    ifairy,
    lowrank,
    lsq,
    pbllm,
    quest,
    qvgen,
    ste,
)
from qscale.qat.attribution import InputStats, input_stats, kurtosis
from qscale.qat.config import (
    DistillConfig,
    InterventionConfig,
    LayerRule,
    QATRecipeConfig,
)
from qscale.qat.distill import distill_loss
from qscale.qat.finetune import qat_finetune
from qscale.qat.linear import ActQuantizer, QuantLinear, WeightQuantizer
from qscale.qat.prepare import LayerPlan, convert, plan_layers, prepare, quant_layers
from qscale.qat.registry import RECIPES, Recipe, get_recipe, register
from qscale.quant.hadamard import hadamard_matrix, hadamard_transform

__all__ = [
    "RECIPES",
    "ActQuantizer",
    "DistillConfig",
    "InputStats",
    "InterventionConfig",
    "LayerPlan",
    "LayerRule",
    "QATRecipeConfig",
    "QuantLinear",
    "Recipe",
    "WeightQuantizer",
    "convert",
    "distill_loss",
    "get_recipe",
    "hadamard_matrix",
    "hadamard_transform",
    "input_stats",
    "kurtosis",
    "plan_layers",
    "prepare",
    "qat_finetune",
    "quant_layers",
    "register",
]
