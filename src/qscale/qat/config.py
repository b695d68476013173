"""Typed configuration of a QAT recipe and of per-layer (mixed-precision) rules.

Layer names and patterns follow qscale's one layer-selection grammar (``qscale.models.select``): ``fnmatch``
globs (``*.down_proj``) or ``re:`` regular expressions matching the whole qualified module name.
"""

from __future__ import annotations

from dataclasses import dataclass

from qscale.errors import require
from qscale.models.select import check_pattern, name_matches
from qscale.qat.registry import RECIPES

UNQUANTIZED = 16  # a bit width of 16 means "keep this operand in full precision"


def _check_bits(bits: int | None, what: str) -> None:
    if bits is None:
        return
    ok = isinstance(bits, int) and not isinstance(bits, bool) and (1 <= bits <= 8 or bits == UNQUANTIZED)
    require(ok, f"{what} must be an integer in 1..8 or 16 (unquantized), got {bits!r}")


@dataclass(frozen=True)
class LayerRule:
    """Override for the layers whose name matches ``pattern``; later rules win over earlier ones.

    w_bits / a_bits: bit width of the weight / input activation (16 = full precision); None keeps the
    value set so far. skip: leave matching layers as plain ``nn.Linear``.
    Example: ``LayerRule("*.down_proj", a_bits=8)`` keeps the FC2 input at 8 bits (Chen et al. 2025; SPEC §2).
    """

    pattern: str
    w_bits: int | None = None
    a_bits: int | None = None
    skip: bool = False

    def __post_init__(self) -> None:
        check_pattern(self.pattern)
        _check_bits(self.w_bits, f"w_bits of rule {self.pattern!r}")
        _check_bits(self.a_bits, f"a_bits of rule {self.pattern!r}")
        require(isinstance(self.skip, bool), f"skip of rule {self.pattern!r} must be a bool")

    def matches(self, name: str) -> bool:
        return name_matches(self.pattern, name)


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from the full-precision teacher (``qscale.qat.distill``).

    loss = T² · KL(softmax(teacher/T) || softmax(student/T)) + ce_weight · CE(student, labels).
    """

    temperature: float = 1.0
    ce_weight: float = 1.0

    def __post_init__(self) -> None:
        require(self.temperature > 0, f"distillation temperature must be positive, got {self.temperature}")
        require(self.ce_weight >= 0, f"distillation ce_weight must be >= 0, got {self.ce_weight}")


@dataclass(frozen=True)
class InterventionConfig:
    """Teacher Intervention (``qscale.qat.intervention``): over the first ``handback`` fraction of the steps the
    teacher's self-attention output, then context, then attention map replace the student's in every layer
    (the authors' step 1: sixth, sixth, two thirds), then plain QAT; TernaryBERT's distillation loss throughout."""

    handback: float = 0.5

    def __post_init__(self) -> None:
        require(0 < self.handback <= 1, f"intervention handback must be in (0, 1], got {self.handback}")


@dataclass(frozen=True)
class QATRecipeConfig:
    """Which recipe, at which precision, on which layers.

    recipe:           registry name: ste | lsq | quest | bitnet | pbllm | lrqat | l4q | efficientqat | edgeqat |
                      gaqat | qvgen | efficientdm | ifairy |
                      double-rounding (``qscale.qat.RECIPES``).
    w_bits / a_bits:  default weight / input-activation bit widths; None = the recipe's default
                      (ste, lsq, quest: W4A4; bitnet: ternary weights (stored in 2 bits), A8; pbllm: W1A16;
                      lrqat, l4q: W4A16; double-rounding: W8A16, the stored precision of its joint training).
    group_size:       G, input columns per weight scale; None = one scale per output channel
                      (ste, lsq; quest scales each rotated row, bitnet the tensor, pbllm each row).
    act_group_size:   None = one activation scale per token; G = per token per G features (Chen et al.;
                      ste only, the other recipes define their own activation scales).
    lsq_plus:         lsq only: learned activation offset (LSQ+, Bhalgat et al. 2020).
    salient_fraction: pbllm only: fraction r of weights (by magnitude) kept at 8 bits.
    exclude:          patterns of layers never quantized (the output head is always excluded).
    rules:            per-layer overrides applied in order (mixed precision).
    distill:          distil from the full-precision model during ``qat_finetune``; None = plain CE.
    rank, lora_alpha: lrqat / l4q only: rank r of the trainable A·B and its scale α (the update is (α/r)·A·B).
    intervention:     Teacher Intervention during ``qat_finetune``, trained on its own (TernaryBERT's)
                      distillation loss, so ``distill`` must be None; None = off.
    options:          the recipe's own typed options (edgeqat, l4q, gaqat, qvgen, efficientdm, ifairy: the
                      ``Recipe.options_type`` dataclass of its module); None = that type's defaults.
    """

    recipe: str = "ste"
    w_bits: int | None = None
    a_bits: int | None = None
    group_size: int | None = 128
    act_group_size: int | None = None
    lsq_plus: bool = False
    salient_fraction: float = 0.1
    exclude: tuple[str, ...] = ("*lm_head", "*embed*")
    rules: tuple[LayerRule, ...] = ()
    distill: DistillConfig | None = None
    rank: int = 16
    lora_alpha: float = 16.0
    intervention: InterventionConfig | None = None
    options: object | None = None

    def __post_init__(self) -> None:
        require(self.recipe in RECIPES, f"unknown QAT recipe {self.recipe!r}; known: {', '.join(sorted(RECIPES))}")
        _check_bits(self.w_bits, "w_bits")
        _check_bits(self.a_bits, "a_bits")
        for name, g in (("group_size", self.group_size), ("act_group_size", self.act_group_size)):
            require(
                g is None or (isinstance(g, int) and not isinstance(g, bool) and g > 0),
                f"{name} must be a positive integer or None, got {g!r}",
            )
        require(self.act_group_size is None or self.recipe == "ste", "act_group_size applies to the ste recipe only")
        require(isinstance(self.lsq_plus, bool), "lsq_plus must be a bool")
        require(not self.lsq_plus or self.recipe == "lsq", "lsq_plus applies to the lsq recipe only")
        require(0.0 <= self.salient_fraction < 1.0, f"salient_fraction must be in [0, 1), got {self.salient_fraction}")
        for p in self.exclude:
            check_pattern(p)
        require(all(isinstance(r, LayerRule) for r in self.rules), "rules must be LayerRule objects")
        require(
            self.distill is None or isinstance(self.distill, DistillConfig), "distill must be a DistillConfig or None"
        )
        require(isinstance(self.rank, int) and self.rank >= 1, f"rank must be a positive integer, got {self.rank!r}")
        require(self.lora_alpha > 0, f"lora_alpha must be positive, got {self.lora_alpha}")
        require(
            self.intervention is None or isinstance(self.intervention, InterventionConfig),
            "intervention must be an InterventionConfig or None",
        )
        require(
            self.intervention is None or self.distill is None,
            "Teacher Intervention trains on its own distillation loss (TernaryBERT's): leave distill unset",
        )
        RECIPES[self.recipe].check_bits(*self.default_bits)
        kind = RECIPES[self.recipe].options_type
        if kind is None:
            require(self.options is None, f"the {self.recipe} recipe takes no options")
        elif self.options is None:
            object.__setattr__(self, "options", kind())
        else:
            require(isinstance(self.options, kind), f"options of {self.recipe} must be a {kind.__name__}")

    @property
    def default_bits(self) -> tuple[int, int]:
        """(w_bits, a_bits) before per-layer rules, with the recipe's defaults filled in."""
        dw, da = RECIPES[self.recipe].default_bits
        return (dw if self.w_bits is None else self.w_bits, da if self.a_bits is None else self.a_bits)

    @property
    def label(self) -> str:
        """Short name, e.g. ``ste-w4a4-g128``, ``lsq+-w4a4-ch``, ``quest-w4a4``."""
        w, a = self.default_bits
        name = f"{self.recipe}{'+' if self.lsq_plus else ''}-w{w}a{a}"
        if RECIPES[self.recipe].uses_group_size:
            name += f"-g{self.group_size}" if self.group_size else "-ch"
        if self.act_group_size:
            name += f"-ag{self.act_group_size}"
        return name
