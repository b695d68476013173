"""qscale.quant: the uniform integer quantizer shared by PTQ, QAT and export (SPEC §6)."""

from qscale.quant.core import (
    QTensor,
    compute_qparams,
    dequantize,
    fake_quantize,
    grid_codes,
    grouped,
    quantize,
    require_finite,
    round_to_grid,
    ungrouped,
)
from qscale.quant.packing import pack_rows, packed_words, unpack_rows
from qscale.quant.qlinear import QuantizedLinear
from qscale.quant.qweight import LAYOUTS, QuantizedWeight, default_g_idx
from qscale.quant.spec import GRANULARITIES, GRIDS, QuantSpec

__all__ = [
    "GRANULARITIES",
    "GRIDS",
    "LAYOUTS",
    "QTensor",
    "QuantSpec",
    "QuantizedLinear",
    "QuantizedWeight",
    "compute_qparams",
    "default_g_idx",
    "dequantize",
    "fake_quantize",
    "grid_codes",
    "grouped",
    "pack_rows",
    "packed_words",
    "quantize",
    "require_finite",
    "round_to_grid",
    "ungrouped",
    "unpack_rows",
]
