"""``QuantizedWeight`` and ``QuantizedLinear``: the one representation, against the core quantizer."""

import pytest
import torch
import torch.nn.functional as F

from qscale.errors import QscaleError
from qscale.quant import QuantizedLinear, QuantizedWeight, QuantSpec, dequantize, quantize

SPECS = [QuantSpec(b, s, "group", 16) for b in (2, 3, 4, 8) for s in (True, False)] + [
    QuantSpec(4, True, "channel", None),
    QuantSpec(3, False, "tensor", None),
    QuantSpec(5, True, "group", 24),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_packed_layer_dequantizes_to_the_core_quantizer_bit_for_bit(spec):
    torch.manual_seed(0)
    W, x, bias = torch.randn(12, 56), torch.randn(3, 5, 56), torch.randn(12)
    qt = quantize(W, spec)
    qw = QuantizedWeight.from_qtensor(qt)
    assert qw.scale.shape[0] == 12 and torch.equal(qw.dequantize(), dequantize(qt))
    layer = QuantizedLinear(qw, bias)
    assert layer.weight_packed.dtype == torch.int32 and layer.weight_packed.shape == (12, -(-56 * spec.bits // 32))
    assert torch.equal(layer.qweight().codes, qt.codes)
    assert torch.equal(layer.dequantized_weight(), dequantize(qt))
    assert torch.equal(layer(x), F.linear(x, dequantize(qt), bias))
    n_groups = qw.scale.shape[1]
    assert layer.weight_nbytes() == 4 * (layer.weight_packed.numel() + 2 * 12 * n_groups + 56)  # words, s, z, g_idx


def test_bad_representations_are_errors():
    qw = QuantizedWeight.from_qtensor(quantize(torch.randn(4, 8), QuantSpec(4, granularity="channel")))
    with pytest.raises(QscaleError, match="non-finite"):
        QuantizedWeight(qw.codes, qw.scale * float("nan"), qw.zero, qw.g_idx, qw.spec)
    with pytest.raises(QscaleError, match="g_idx"):
        QuantizedWeight(qw.codes, qw.scale, qw.zero, qw.g_idx[:3], qw.spec)
    with pytest.raises(QscaleError, match="layout"):
        QuantizedWeight(qw.codes, qw.scale, qw.zero, qw.g_idx, qw.spec, layout="nf4")
