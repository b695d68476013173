import pytest
import torch

from qscale.qat.ste import STEWeightQuantizer, act_spec, ste_fake_quantize, weight_spec
from qscale.quant import QuantSpec, dequantize, quantize

SPECS = [
    QuantSpec(4, granularity="group", group_size=32),
    QuantSpec(3, granularity="group", group_size=48),  # ragged last group (100 % 48)
    QuantSpec(2, granularity="channel", group_size=None),
    QuantSpec(8, granularity="token", group_size=None),
    QuantSpec(4, symmetric=False, granularity="token", group_size=None),
    QuantSpec(1, granularity="group", group_size=32),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_forward_equals_dequantize_quantize_exactly(spec):
    torch.manual_seed(0)
    x = torch.randn(16, 100, requires_grad=True)
    y = ste_fake_quantize(x, spec)
    assert torch.equal(y, dequantize(quantize(x.detach(), spec)))
    y.sum().backward()  # data-derived parameters: every value is inside the range -> identity gradient
    assert torch.equal(x.grad, torch.ones_like(x))


def test_weight_quantizer_forward_equals_frozen_dequantize():
    torch.manual_seed(1)
    w = torch.randn(24, 64)
    q = STEWeightQuantizer(weight_spec(4, 16))
    assert torch.equal(q(w), q.freeze(w).dequantize())
    assert q.freeze(w).codes.dtype == torch.int8
    assert q.freeze(w).codes.min() >= -7  # restricted AbsMax grid: code -8 never produced


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_ste_gradient_inside_passes_outside_zero(bits):
    spec = QuantSpec(bits, granularity="tensor", group_size=None)
    step = 1.5 / 2 ** (bits - 1)  # the range covers about [-1.5, 1.5] of the data's [-3, 3]
    s = torch.tensor([[step]])
    x = torch.linspace(-3.0, 3.0, 601, dtype=torch.float64).requires_grad_()
    y = ste_fake_quantize(x, spec, scale=s)
    (y * torch.arange(601.0, dtype=torch.float64)).sum().backward()
    u = x.detach() / step
    inside = (u >= spec.qmin - 0.5) & (u <= spec.qmax + 0.5)
    assert inside.any() and (~inside).any()
    expected = torch.where(inside, torch.arange(601.0, dtype=torch.float64), 0.0)
    assert torch.equal(x.grad, expected)
    # forward: clipped to the extreme levels outside, |x - x̂| <= s/2 inside (SPEC §6)
    assert torch.all((x.detach() - y.detach()).abs()[inside] <= step / 2 + 1e-12)
    assert torch.all(y.detach()[~inside].abs() >= step * spec.qmax - 1e-12)


def test_specs_for_layers():
    assert weight_spec(4, None).granularity == "channel"
    assert weight_spec(4, 32).group_size == 32
    assert act_spec(4, None).granularity == "token"
    assert act_spec(4, 64).granularity == "group"
