"""Uniform quantizer against its definition (SPEC §6)."""

import pytest
import torch

from qscale.errors import QscaleError
from qscale.quant import QuantSpec, compute_qparams, dequantize, fake_quantize, quantize, round_to_grid

GRANS = [
    ("tensor", None, (6, 40)),
    ("channel", None, (6, 40)),
    ("group", 8, (6, 40)),
    ("group", 16, (6, 40)),  # ragged last group (40 = 2*16 + 8)
    ("group", 64, (6, 40)),  # one group wider than the row
    ("token", None, (2, 3, 40)),
]


def _x(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * torch.rand((*shape[:-1], 1), generator=g) * 3 + 0.3


def _expand(x, spec, scale):
    if spec.granularity == "tensor":
        return scale.reshape(()).expand_as(x)
    if spec.granularity in ("channel", "token"):
        return scale.expand_as(x)
    G = spec.group_size
    return scale.squeeze(-1).repeat_interleave(G, dim=-1)[..., : x.shape[-1]]


@pytest.mark.parametrize("gran,G,shape", GRANS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_error_within_half_step(gran, G, shape, symmetric, bits):
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=gran, group_size=G)
    x = _x(shape, seed=bits)
    qt = quantize(x, spec)
    xhat = dequantize(qt)
    s = _expand(x, spec, qt.scale)
    assert xhat.shape == x.shape
    assert torch.all((x - xhat).abs() <= s / 2 * (1 + 1e-5) + 1e-7)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("gran,G,shape", GRANS)
def test_codes_in_range_and_fake_quantize_exact(bits, symmetric, gran, G, shape):
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=gran, group_size=G)
    x = _x(shape, seed=10 + bits) * 5
    qt = quantize(x, spec)
    c = qt.codes.to(torch.int32)
    assert c.min() >= spec.qmin and c.max() <= spec.qmax
    assert torch.equal(fake_quantize(x, spec), dequantize(qt))
    # codes of values far outside the parameters' range are clamped, never out of range
    big = quantize(x * 100, spec, scale=qt.scale, zero=None if symmetric else qt.zero).codes.to(torch.int32)
    assert big.min() >= spec.qmin and big.max() <= spec.qmax


def test_qmin_qmax():
    assert (QuantSpec(4).qmin, QuantSpec(4).qmax) == (-8, 7)
    assert (QuantSpec(4, symmetric=False).qmin, QuantSpec(4, symmetric=False).qmax) == (0, 15)
    assert (QuantSpec(1).qmin, QuantSpec(1).qmax) == (-1, 0)
    assert (QuantSpec(8).qmin, QuantSpec(8).qmax) == (-128, 127)


def test_exact_codes_symmetric_full_grid_by_hand():
    # 3-bit symmetric per channel, ecosystem grid: s = 2·absmax/7 = 1 -> all 8 codes -4..3 reachable
    x = torch.tensor([[-3.5, 1.4, 0.4, 3.2], [0.0, 0.0, 0.0, 0.0]])
    qt = quantize(x, QuantSpec(3, granularity="channel"))
    assert torch.equal(qt.scale, torch.tensor([[1.0], [0.0]]))  # second row: all zero -> scale 0
    assert qt.codes.tolist() == [[-4, 1, 0, 3], [0, 0, 0, 0]]
    assert dequantize(qt).tolist() == [[-4.0, 1.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]]


def test_exact_codes_symmetric_restricted_grid_by_hand():
    # 3-bit symmetric per channel, restricted absmax grid: s = absmax / 3, code -4 never produced
    x = torch.tensor([[3.0, -1.4, 0.4, 1.6], [-3.0, 0.0, 0.0, 0.0]])
    qt = quantize(x, QuantSpec(3, granularity="channel", grid="restricted"))
    assert torch.equal(qt.scale, torch.tensor([[1.0], [1.0]]))
    assert qt.codes.tolist() == [[3, -1, 0, 2], [-3, 0, 0, 0]]


def test_two_bit_grids_have_four_and_three_levels():
    x = torch.linspace(-1, 1, 101).reshape(1, -1)
    full = quantize(x, QuantSpec(2, granularity="channel")).codes.unique().tolist()
    restricted = quantize(x, QuantSpec(2, granularity="channel", grid="restricted")).codes.unique().tolist()
    assert full == [-2, -1, 0, 1] and restricted == [-1, 0, 1]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("gran,G", [("channel", None), ("group", 4), ("tensor", None), ("token", None)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_rows_come_back_as_zero(bits, gran, G, symmetric):
    x = torch.zeros(3, 8)
    x[0, :4] = torch.tensor([0.5, -1.0, 2.0, 0.25])  # a non-zero row beside the all-zero ones
    if bits == 1 and symmetric and gran == "tensor":
        pytest.skip("a sign quantizer has no zero level: zeros sharing a scale with others become ±s/2")
    spec = QuantSpec(bits, symmetric=symmetric, granularity=gran, group_size=G)
    out = fake_quantize(x, spec)
    assert torch.equal(out[1:], torch.zeros(2, 8))
    assert torch.equal(dequantize(quantize(x, spec))[1:], torch.zeros(2, 8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("symmetric", [True, False])
def test_non_finite_input_is_an_error(bad, symmetric):
    x = torch.randn(4, 16)
    x[2, 5] = bad
    spec = QuantSpec(4, symmetric=symmetric, granularity="group", group_size=8)
    for fn in (lambda: compute_qparams(x, spec), lambda: quantize(x, spec), lambda: fake_quantize(x, spec)):
        with pytest.raises(QscaleError, match="NaN or Inf"):
            fn()
    scale, zero = compute_qparams(torch.randn(4, 16), spec)
    with pytest.raises(QscaleError, match="NaN or Inf"):
        quantize(x, spec, scale=scale, zero=zero)


def test_exact_codes_asymmetric_groups_by_hand():
    # 2-bit asymmetric, groups of 2: group [-1, 2] -> s = 1, z = 1; group [0.5, 1.5] -> lo = 0, s = 0.5, z = 0
    x = torch.tensor([[-1.0, 2.0, 0.5, 1.5]])
    spec = QuantSpec(2, symmetric=False, granularity="group", group_size=2)
    qt = quantize(x, spec)
    assert qt.scale.flatten().tolist() == [1.0, 0.5]
    assert qt.zero.flatten().tolist() == [1.0, 0.0]
    assert qt.codes.tolist() == [[0, 3, 1, 3]]
    assert dequantize(qt).tolist() == [[-1.0, 2.0, 0.5, 1.5]]


def test_one_bit_symmetric_is_sign_times_half_absmax():
    x = torch.tensor([[2.0, -0.3, 0.1, -2.0]])
    xhat = fake_quantize(x, QuantSpec(1, granularity="channel"))
    assert xhat.tolist() == [[1.0, -1.0, 1.0, -1.0]]


def test_param_shapes():
    w = torch.randn(6, 40)
    assert compute_qparams(w, QuantSpec(4, granularity="tensor"))[0].shape == (1, 1)
    assert compute_qparams(w, QuantSpec(4, granularity="channel"))[0].shape == (6, 1)
    assert compute_qparams(w, QuantSpec(4, granularity="group", group_size=16))[0].shape == (6, 3, 1)
    assert compute_qparams(torch.randn(2, 3, 40), QuantSpec(4, granularity="token"))[0].shape == (2, 3, 1)


def test_round_to_grid_matches_fake_quantize_per_channel():
    spec = QuantSpec(4, symmetric=False, granularity="channel")
    w = torch.randn(5, 9)
    s, z = compute_qparams(w, spec)
    assert torch.equal(round_to_grid(w, s, z, spec), fake_quantize(w, spec))


def test_half_precision_input_keeps_dtype():
    x = torch.randn(4, 32).to(torch.bfloat16)
    y = fake_quantize(x, QuantSpec(4, granularity="group", group_size=16))
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, dequantize(quantize(x, QuantSpec(4, granularity="group", group_size=16))).to(torch.bfloat16))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(bits=0),
        dict(bits=9),
        dict(bits=4.0),
        dict(bits=4, granularity="row"),
        dict(bits=4, granularity="group", group_size=0),
        dict(bits=4, granularity="group", group_size=None),
        dict(bits=4, symmetric="yes"),
    ],
)
def test_spec_validation(kwargs):
    with pytest.raises(QscaleError):
        QuantSpec(**kwargs)


def test_bad_inputs():
    with pytest.raises(QscaleError):
        quantize(torch.arange(4), QuantSpec(4, granularity="tensor"))
    with pytest.raises(QscaleError):
        quantize(torch.randn(2, 4), QuantSpec(4, symmetric=False, granularity="channel"), scale=torch.ones(2, 1))
