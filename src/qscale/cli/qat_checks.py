"""Checks and parsing behind ``qscale qat``: the ``--rule`` grammar, recipe-specific flags, output formats and
the record that says a run with the same flags already finished."""

from __future__ import annotations

import json
import re
from pathlib import Path

from transformers.pytorch_utils import Conv1D

from qscale.cli.pipeline import check_group_widths
from qscale.errors import QscaleError, require
from qscale.export.compressed_tensors import check_layer
from qscale.export.folder import quantized_layers
from qscale.qat import LayerRule, QATRecipeConfig
from qscale.qat.prepare import plan_layers

_RULE = re.compile(r"^(?P<pattern>[^=]+)=(?:w(?P<w>\d+))?(?:a(?P<a>\d+))?$|^(?P<skip>[^=]+)=skip$")


def parse_rule(text: str) -> LayerRule:
    """``PATTERN=w8a8`` / ``PATTERN=a8`` / ``PATTERN=skip`` → ``LayerRule`` (mixed precision)."""
    m = _RULE.match(text.strip())
    if not m or not (m["w"] or m["a"] or m["skip"]):
        raise QscaleError(f"--rule must look like PATTERN=w8a8, PATTERN=a8 or PATTERN=skip, got {text!r}")
    if m["skip"]:
        return LayerRule(m["skip"], skip=True)
    return LayerRule(
        m["pattern"], w_bits=None if m["w"] is None else int(m["w"]), a_bits=None if m["a"] is None else int(m["a"])
    )


def parse_joint_bits(text: str, high: int) -> tuple[int, ...]:
    """``--joint-bits 8,6,4,2`` → (8, 6, 4, 2); the highest must be the stored precision ``--w-bits``."""
    try:
        bits = tuple(sorted({int(b) for b in text.split(",")}, reverse=True))
    except ValueError:
        raise QscaleError(f"--joint-bits must be comma-separated integers, got {text!r}") from None
    require(
        bits and bits[0] == high and bits[-1] >= 2,
        f"--joint-bits must lie in 2..{high} and include the stored precision --w-bits {high}, got {text!r}",
    )
    return bits


def auto_format(model, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        for name, layer in quantized_layers(model).items():
            check_layer(name, layer)
    except QscaleError:
        return "qscale"
    return "compressed-tensors"


REQUEST = (
    "recipe",
    "tokens",
    "w_bits",
    "a_bits",
    "group_size",
    "rule",
    "rank",
    "lora_alpha",
    "samples",
    "lr",
    "batch_size",
    "seq_len",
    "data",
    "eval_data",
    "eval_windows",
    "tokenizer",
    "fmt",
    "dtype",
    "block_steps",
    "calib_windows",
    "joint_bits",
    "seed",
    "distill",
    "intervention",
)
_RECIPE_OPTIONS = {  # flag -> (recipes that read it, default)
    "--rank": (("lrqat", "l4q", "efficientdm", "qvgen"), 16),
    "--lora-alpha": (("lrqat", "l4q", "efficientdm"), 16.0),
    "--samples": (("efficientdm",), 256),
    "--block-steps": (("efficientqat",), 50),
    "--calib-windows": (("efficientqat",), 32),
    "--joint-bits": (("double-rounding",), "8,6,4,2"),
}


def recipe_options(recipe: str, given: dict) -> dict:
    """Recipe-specific flags: refused when the recipe would ignore them, else given or their default."""
    out = {}
    for flag, value in given.items():
        recipes, default = _RECIPE_OPTIONS[flag]
        require(
            value is None or recipe in recipes,
            f"{flag} applies to --recipe {' / '.join(recipes)} only; {recipe} would ignore it",
        )
        out[flag] = default if value is None else value
    return out


def finished(out: Path, request: dict) -> bool:
    """Whether ``out`` holds the record of a finished run with these very flags."""
    try:
        return json.loads((out / "qscale-qat.json").read_text()).get("request") == request
    except (OSError, ValueError, AttributeError):
        return False


def check_format(model, cfg: QATRecipeConfig, fmt: str) -> None:
    """Before training: a standard format (compressed-tensors, gptq) can hold the layers QAT will produce."""
    plans = plan_layers(model, cfg)
    require(
        all(p.a_bits == 16 for p in plans.values()),
        f"quantized activations (--a-bits, --rule ...a<N>) are stored by --format qscale only, not {fmt}",
    )
    if fmt in ("compressed-tensors", "all"):
        layers = {name: model.get_submodule(name) for name in plans}
        require(
            not any(isinstance(m, Conv1D) for m in layers.values()),
            "compressed-tensors only replaces nn.Linear modules; this model's linear layers are GPT-2 style "
            "Conv1D: use --format gptq or qscale",
        )
        check_group_widths(layers, cfg.group_size)
