"""Double Rounding: every precision from the stored integers, none from full-precision weights.

Golden codes worked out by hand from the paper's second rounding (Huang et al. 2025, arXiv 2502.01199:
``q_b = clamp(⌊q_h / 2^(h−b)⌉, −2^(b−1), 2^(b−1) − 1)``, ``s_b = s_h · 2^(h−b)``), not from the implementation;
ties round to even (``torch.round``), the one rule the training forward and the served model share."""

import pytest
import torch

from qscale.errors import QscaleError
from qscale.quant import QuantizedWeight, QuantSpec
from qscale.quant.switch import switch_bits

STORED = [-128, -127, -65, -64, -63, -40, -8, -1, 0, 1, 8, 24, 40, 63, 64, 65, 96, 127]
# by hand: 4 bits divide by 16, 2 bits by 64, then clamp to [-8, 7] / [-2, 1]
# -127/16 = -7.94 -> -8;  -65/16 = -4.06 -> -4;  -40/16 = -2.5 -> -2 (tie, even);  -8/16 = -0.5 -> 0 (tie, even)
# 24/16 = 1.5 -> 2;  40/16 = 2.5 -> 2;  63/16 = 3.94 -> 4;  96/16 = 6;  127/16 = 7.94 -> 8 -> clamp 7
FOUR = [-8, -8, -4, -4, -4, -2, 0, 0, 0, 0, 0, 2, 2, 4, 4, 4, 6, 7]
# -127/64 = -1.98 -> -2;  -65/64 -> -1;  -40/64 = -0.625 -> -1;  40/64 = 0.625 -> 1;  65/64 -> 1;  96/64 = 1.5 -> 2
# -> clamp 1;  127/64 = 1.98 -> 2 -> clamp 1
TWO = [-2, -2, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]


def _stored(scale=0.01):
    codes = torch.tensor([STORED], dtype=torch.int8)
    s = torch.tensor([[scale]])
    return QuantizedWeight(
        codes, s, torch.zeros_like(s), torch.zeros(len(STORED), dtype=torch.int32), QuantSpec(8, True, "channel")
    )


@pytest.mark.parametrize("bits,expected,shift", [(4, FOUR, 16), (2, TWO, 64)])
def test_switch_is_a_second_rounding_of_the_stored_codes(bits, expected, shift):
    low = switch_bits(_stored(), bits)
    assert low.codes[0].tolist() == expected
    assert low.spec.bits == bits and float(low.scale) == pytest.approx(0.01 * shift)
    assert low.dequantize()[0].tolist() == pytest.approx([0.01 * shift * c for c in expected])


def test_switch_to_the_stored_width_is_the_stored_weight_and_wider_is_refused():
    qw = _stored()
    assert switch_bits(qw, 8) is qw
    with pytest.raises(QscaleError):
        switch_bits(qw, 9)
    with pytest.raises(QscaleError):
        switch_bits(qw, 1)
