"""qscale.quant: the uniform integer quantizer shared by PTQ, QAT and export (SPEC §6)."""

from qscale.quant.core import (
    QTensor,
    compute_qparams,
    dequantize,
    fake_quantize,
    grid_codes,
    grouped,
    quantize,
    round_to_grid,
    ungrouped,
)
from qscale.quant.spec import GRANULARITIES, QuantSpec

__all__ = [
    "GRANULARITIES",
    "QTensor",
    "QuantSpec",
    "compute_qparams",
    "dequantize",
    "fake_quantize",
    "grid_codes",
    "grouped",
    "quantize",
    "round_to_grid",
    "ungrouped",
]
