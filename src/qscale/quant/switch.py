"""Double Rounding bit switching ("Nearly Lossless Adaptive Bit Switching", Huang et al. 2025).

One model is stored at its highest integer precision (symmetric codes ``q_B`` with scales ``s_B``, e.g. B = 8);
each lower precision ``b`` is obtained by rounding the stored integers again,
``q_b = clamp(round(q_B / 2^(B−b)), −2^(b−1), 2^(b−1) − 1)`` with ``s_b = s_B · 2^(B−b)``, so switching needs
no full-precision copy of the weights: the file holds only the B-bit codes and their scales.
"""

from __future__ import annotations

import torch

from qscale.errors import require
from qscale.quant.qweight import QuantizedWeight
from qscale.quant.spec import QuantSpec


def switch_bits(qw: QuantizedWeight, bits: int) -> QuantizedWeight:
    """The ``bits``-bit weight derived from the stored codes of ``qw`` by a second rounding."""
    spec = qw.spec
    require(qw.layout == "uniform" and spec.symmetric, "bit switching re-rounds symmetric uniform codes only")
    require(1 < bits <= spec.bits, f"can switch {spec.bits}-bit codes down to 2..{spec.bits} bits, not {bits}")
    if bits == spec.bits:
        return qw
    shift = 2 ** (spec.bits - bits)
    low = QuantSpec(bits, True, spec.granularity, spec.group_size, grid=spec.grid)
    codes = torch.clamp(torch.round(qw.codes.to(torch.float32) / shift), low.qmin, low.qmax).to(torch.int8)
    return QuantizedWeight(codes, qw.scale * shift, qw.zero, qw.g_idx, low)
