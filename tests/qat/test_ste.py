import pytest
import torch

from qscale.qat.ste import STEActQuantizer, STEWeightQuantizer, act_spec, ste_fake_quantize, weight_spec
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


def test_golden_values_worked_out_by_hand():
    """No authors' code (Bengio et al. 2013's STE on Chen et al. 2025's AbsMax quantizers): the values below are
    worked out by hand from the formulas, s = absmax/(2^(b−1) − 1), q = round(x/s), x̂ = q·s (1 bit: ±absmax/2)."""
    x = torch.tensor([[0.3, -1.2, 0.7, 2.0]], requires_grad=True)
    y = STEActQuantizer(act_spec(4, None))(x)  # s = 2/7; x/s = 1.05, −4.2, 2.45, 7
    assert torch.allclose(y, torch.tensor([[1.0, -4.0, 2.0, 7.0]]) * 2 / 7, atol=1e-7)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(1, 4))
    w = torch.tensor([[0.1, -0.4, 0.25, 0.05, 1.0, 0.3, -0.6, 0.2]])
    # 3 bits per group of 4: s = 0.4/3 (x/s = 0.75, −3, 1.875, 0.375) and 1/3 (x/s = 3, 0.9, −1.8, 0.6)
    expected = torch.tensor([[0.4 / 3, -0.4, 0.8 / 3, 0.0, 1.0, 1 / 3, -2 / 3, 1 / 3]])
    assert torch.allclose(STEWeightQuantizer(weight_spec(3, 4))(w), expected, atol=1e-7)
    assert torch.allclose(
        STEWeightQuantizer(weight_spec(1, 4))(w),
        torch.tensor([[1, -1, 1, 1, 1, 1, -1, 1]]) * torch.tensor([[0.2] * 4 + [0.5] * 4]),
        atol=1e-7,
    )  # 1 bit: ±absmax/2 per group
