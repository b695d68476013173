"""Activation quantizers rebuilt from their ``describe()``.

This is how ``load_quantized`` restores a QAT layer's input quantizer.
"""

from __future__ import annotations

from qscale.errors import QscaleError
from qscale.qat.edgeqat import TokenAdaptiveActQuantizer
from qscale.qat.linear import ActQuantizer, params_to_buffers
from qscale.qat.lsq import LSQActQuantizer
from qscale.qat.quest import QuestActQuantizer
from qscale.qat.ste import STEActQuantizer
from qscale.quant import QuantSpec


def act_quantizer_from(desc: dict) -> ActQuantizer:
    """The (converted, parameter-free) activation quantizer a description names; its buffers load afterwards."""
    try:
        kind = desc["kind"]
        if kind == "absmax":
            return STEActQuantizer(
                QuantSpec(
                    int(desc["bits"]),
                    bool(desc.get("symmetric", True)),
                    desc["granularity"],
                    desc["group_size"],
                    grid=desc["grid"],
                )
            )
        if kind == "lsq":
            q = LSQActQuantizer(int(desc["in_features"]), int(desc["bits"]), bool(desc["offset"]))
            params_to_buffers(q)
            return q
        if kind == "edgeqat":
            return TokenAdaptiveActQuantizer(int(desc["bits"]), int(desc["high_bits"]), float(desc["low_fraction"]))
        if kind == "quest":
            return QuestActQuantizer(int(desc["bits"]))
    except (KeyError, TypeError, ValueError) as e:
        raise QscaleError(f"malformed activation quantizer description {desc!r}: {e}") from None
    raise QscaleError(f"unknown activation quantizer kind {desc.get('kind')!r}")
