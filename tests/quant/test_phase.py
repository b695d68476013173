"""Complex phase layout: widely-linear form is exact, PhaseQuant by definition, multiplication-free forward."""

import torch

from qscale.quant.phase import (
    dequantize_layout,
    mulfree_linear,
    pack_layout,
    phase_codes,
    phase_quantize,
    phase_values,
    real_from_widely,
    unpack_layout,
    widely_linear,
)


def _complex_view(x):
    n = x.shape[-1] // 2
    return torch.complex(x[..., :n], x[..., n:])


def test_widely_linear_is_the_real_layer():
    torch.manual_seed(0)
    w, x = torch.randn(6, 10, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64)
    u, v = widely_linear(w)
    z = _complex_view(x)
    y = z @ u.T + z.conj() @ v.T
    assert torch.allclose(torch.cat([y.real, y.imag], -1), x @ w.T)
    assert torch.allclose(real_from_widely(u, v), w)


def test_phasequant_nearest_root_of_unity_and_axis_scales():
    angles = torch.tensor([0.1, 1.0, 2.0, 3.0, -3.0, -2.0, -1.0, -0.2])
    z = torch.polar(torch.linspace(0.5, 2.0, 8), angles)
    codes, s = phase_quantize(z)
    roots = torch.tensor([1, 1j, -1, -1j], dtype=torch.complex64)
    nearest = (z[:, None] / z.abs()[:, None] - roots).abs().argmin(-1)
    assert torch.equal(codes, nearest) and codes.tolist() == [0, 1, 1, 2, 2, 3, 3, 0]
    on_re = codes % 2 == 0
    assert torch.allclose(s, torch.stack([z.real.abs()[on_re].mean(), z.imag.abs()[~on_re].mean()]))
    vals = phase_values(codes, s[0], s[1])
    assert torch.all((vals.real == 0) ^ (vals.imag == 0))  # each value on one axis
    assert torch.allclose(vals.abs(), torch.where(on_re, s[0], s[1]))


def test_layout_values_in_roots_of_unity_times_scale_and_residual_stages_help():
    torch.manual_seed(1)
    w = torch.randn(8, 12)
    codes, scale = pack_layout(w)
    assert codes.shape == w.shape and codes.dtype == torch.uint8 and int(codes.max()) <= 3  # 2 bits per real weight
    u, _ = widely_linear(w)
    qu, qv = unpack_layout(codes, scale)
    assert torch.allclose(real_from_widely(qu, qv), dequantize_layout(codes, scale))
    # stage 1 alone: every entry of U is ±s_re or ±i·s_im
    first = phase_values(codes[:4, :6].long(), scale[0, 0, 0], scale[0, 0, 1])
    assert set(first.flatten().tolist()) <= {
        complex(scale[0, 0, 0]),
        complex(-scale[0, 0, 0]),
        complex(0, scale[0, 0, 1]),
        complex(0, -scale[0, 0, 1]),
    }
    assert torch.equal(codes[:4, :6].long(), phase_codes(u))
    one_stage = real_from_widely(first, phase_values(codes[4:, :6].long(), scale[0, 1, 0], scale[0, 1, 1]))
    assert (dequantize_layout(codes, scale) - w).norm() < (one_stage - w).norm()


def test_multiplication_free_forward_equals_the_complex_matmul():
    torch.manual_seed(2)
    w, x = torch.randn(10, 16, dtype=torch.float64), torch.randn(3, 5, 16, dtype=torch.float64)
    codes, scale = pack_layout(w)
    scale = scale.double()
    qu, qv = unpack_layout(codes, scale)
    z = _complex_view(x)
    y = z @ qu.T.to(z.dtype) + z.conj() @ qv.T.to(z.dtype)
    out = mulfree_linear(x, codes, scale)
    assert torch.allclose(out, torch.cat([y.real, y.imag], -1))
    assert torch.allclose(out, x @ dequantize_layout(codes, scale).double().T)
