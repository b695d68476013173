"""Channel reassembly (QLLM's index tensors): split channels are exact, merged pairs follow their definition."""

import pytest
import torch

from qscale.errors import QscaleError
from qscale.quant import QuantizedLinear, QuantizedWeight, QuantSpec, quantize
from qscale.quant.reassembly import ChannelReassembly


def test_hand_example_split_and_merge():
    # 3 input channels: channel 0 split in two (slots 0 and 2), channels 1 and 2 merged into slot 1
    r = ChannelReassembly(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 1, 2]), torch.tensor([0.5, 0.5, 0.5, 0.5]), 3)
    x = torch.tensor([[4.0, 2.0, 6.0]])
    w = torch.tensor([[1.0, 10.0, 100.0]])
    assert r.apply(x).tolist() == [[2.0, 4.0, 2.0]]
    assert r.weight(w).tolist() == [[1.0, 110.0, 1.0]]
    # x0·w0 exact; (x1 + x2)/2·(w1 + w2) = 4·110 instead of 2·10 + 6·100 = 620
    assert float(r.apply(x) @ r.weight(w).t()) == 4 + 440


def test_quantized_linear_applies_its_reassembly_and_rejects_a_misfit():
    r = ChannelReassembly(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 1, 2]), torch.full((4,), 0.5), 3)
    qw = QuantizedWeight.from_qtensor(quantize(torch.randn(2, 3), QuantSpec(8, granularity="channel", group_size=None)))
    layer = QuantizedLinear(qw, reassembly=r)
    x = torch.randn(5, 3)
    assert torch.allclose(layer(x), r.apply(x) @ qw.dequantize().t())
    assert "reassembled" in repr(layer) and layer.reassembly().width == 3
    with pytest.raises(QscaleError, match="does not fit"):
        QuantizedLinear(qw, reassembly=ChannelReassembly(r.src, r.dst, r.coef, 4))
    with pytest.raises(QscaleError, match="out of range"):
        ChannelReassembly(r.src, torch.tensor([0, 1, 1, 3]), r.coef, 3)
