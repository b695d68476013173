"""Double Rounding: every precision from the stored integers, none from full-precision weights."""

import pytest
import torch

from qscale.errors import QscaleError
from qscale.quant import QuantizedWeight, QuantSpec, quantize
from qscale.quant.switch import switch_bits


def test_switch_is_a_second_rounding_of_the_stored_codes():
    torch.manual_seed(0)
    qw = QuantizedWeight.from_qtensor(quantize(torch.randn(8, 64), QuantSpec(8, True, "group", 32)))
    for bits in (6, 4, 2):
        low = switch_bits(qw, bits)
        shift = 2 ** (8 - bits)
        expected = torch.clamp(torch.round(qw.codes.float() / shift), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        assert torch.equal(low.codes.float(), expected) and torch.equal(low.scale, qw.scale * shift)
        assert low.spec.bits == bits and (low.dequantize() - qw.dequantize()).abs().max() <= low.scale.max()
    with pytest.raises(QscaleError):
        switch_bits(qw, 9)
