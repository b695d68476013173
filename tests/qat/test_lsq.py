"""LSQ / LSQ+ gradients against the paper's formula and against finite differences of the surrogate.

LSQ's step gradient is not the derivative of the quantizer (which is piecewise linear in s with jumps);
it is the exact derivative of the straight-through surrogate ``v̂(s) = s·(clip(v/s) + r)`` in which the
rounding residual ``r = round(clip(v/s)) − clip(v/s)`` is held at its value at the current s. Central
differences of that surrogate, times the gradient scale g, must reproduce autograd.
"""

import math

import pytest
import torch

from qscale.errors import QscaleError
from qscale.qat.lsq import LSQActQuantizer, LSQWeightQuantizer, lsq_fake_quantize
from qscale.quant import QuantSpec, dequantize, quantize

SPEC = QuantSpec(3, granularity="tensor", group_size=None)  # Q_N = 4, Q_P = 3


def _data():
    torch.manual_seed(0)
    v = torch.randn(4000, dtype=torch.float64) * 0.6
    w = torch.randn(4000, dtype=torch.float64)  # upstream gradient dL/dv̂
    return v, w


def _surrogate(v, s, s0, beta, beta0, spec):
    """v̂ as a function of (s, β) with the rounding residual frozen at (s0, β0)."""
    c0 = ((v - beta0) / s0).clamp(spec.qmin, spec.qmax)
    r = torch.round(c0) - c0
    return s * (((v - beta) / s).clamp(spec.qmin, spec.qmax) + r) + beta


@pytest.mark.parametrize("s0", [0.1, 0.25, 0.6])
def test_step_gradient_matches_formula_and_finite_differences(s0):
    v, w = _data()
    g = 1 / math.sqrt(v.numel() * SPEC.qmax)
    s = torch.tensor([[s0]], dtype=torch.float64, requires_grad=True)
    vv = v.clone().requires_grad_()
    (lsq_fake_quantize(vv, SPEC, s, g) * w).sum().backward()
    u = v / s0
    formula = torch.where(
        u < SPEC.qmin, float(SPEC.qmin), torch.where(u > SPEC.qmax, float(SPEC.qmax), torch.round(u) - u)
    )
    assert torch.allclose(s.grad.squeeze(), (w * formula).sum() * g, rtol=1e-10)
    h = 1e-6
    zero = torch.tensor(0.0, dtype=torch.float64)
    plus, minus = _surrogate(v, s0 + h, s0, zero, zero, SPEC), _surrogate(v, s0 - h, s0, zero, zero, SPEC)
    fd = ((plus - minus) * w).sum() / (2 * h)
    assert torch.allclose(s.grad.squeeze(), fd * g, rtol=1e-6, atol=1e-9)
    # dv̂/dv: 1 inside the clipping range, 0 outside (and some values are outside for s0 <= 0.25)
    inside = (u >= SPEC.qmin) & (u <= SPEC.qmax)
    assert torch.equal(vv.grad, torch.where(inside, w, 0.0))


def test_offset_gradient_lsq_plus_matches_finite_differences():
    v, w = _data()
    s0, b0 = 0.2, 0.15
    s = torch.tensor([[s0]], dtype=torch.float64, requires_grad=True)
    beta = torch.tensor([[b0]], dtype=torch.float64, requires_grad=True)
    (lsq_fake_quantize(v, SPEC, s, 1.0, beta) * w).sum().backward()
    h = 1e-6
    b = torch.tensor(b0, dtype=torch.float64)
    fd_b = ((_surrogate(v, s0, s0, b + h, b, SPEC) - _surrogate(v, s0, s0, b - h, b, SPEC)) * w).sum() / (2 * h)
    fd_s = ((_surrogate(v, s0 + h, s0, b, b, SPEC) - _surrogate(v, s0 - h, s0, b, b, SPEC)) * w).sum() / (2 * h)
    assert torch.allclose(beta.grad.squeeze(), fd_b, rtol=1e-6)
    assert torch.allclose(s.grad.squeeze(), fd_s, rtol=1e-6, atol=1e-9)
    outside = ((v - b0) / s0 < SPEC.qmin) | ((v - b0) / s0 > SPEC.qmax)
    assert torch.allclose(beta.grad.squeeze(), w[outside].sum())  # SPEC: dv̂/dβ = 1 outside, 0 inside


def test_weight_init_grad_scale_and_freeze():
    torch.manual_seed(0)
    wt = torch.randn(8, 64)
    spec = QuantSpec(4, granularity="group", group_size=16)
    q = LSQWeightQuantizer(wt, spec)
    expected = 2 * wt.abs().reshape(8, 4, 16).mean(-1, keepdim=True) / math.sqrt(spec.qmax)  # LSQ init, SPEC §6
    assert torch.allclose(q.step, expected)
    assert q.grad_scale == pytest.approx(1 / math.sqrt(16 * 7))
    frozen = q.freeze(wt)
    assert torch.equal(q(wt), frozen.dequantize())
    qt = quantize(wt, spec, scale=q.step.detach())
    assert torch.equal(q(wt), dequantize(qt))


def test_activation_init_from_first_batch_and_bits():
    x = torch.randn(4, 10, 32)
    a = LSQActQuantizer(32, 4, offset=False)
    a(x)
    assert a.step.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(7), rel=1e-6)
    a2 = LSQActQuantizer(32, 4, offset=True)
    a2(x)
    lo, hi = x.min().item(), x.max().item()
    assert a2.step.item() == pytest.approx((hi - lo) / 15, rel=1e-5)
    assert a2.offset.item() == pytest.approx(lo + 8 * (hi - lo) / 15, rel=1e-5, abs=1e-6)
    a3 = LSQActQuantizer(32, 4, offset=False)
    a3.load_state_dict(a.state_dict())
    a3(x * 10)  # restored: no re-initialization from this batch
    assert a3.step.item() == a.step.item()
    with pytest.raises(QscaleError):
        LSQActQuantizer(32, 1, offset=False)


# Golden values from zhutmost/lsq-net @ 1f644e9b45925354503f2e2d070c56ae8b552202 (a widely used LSQ reference; LSQ
# has no official code): quan/quantizer/lsq.py ``LsqQuan(bit, all_positive=False, symmetric=False)`` run on CPU on
# the ``golden`` inputs below, in a scratch folder outside the project.
LSQ_NET_T_Y = [
    0.3,
    0.9,
    0.6,
    0.9,
    0.9,
    0.9,
    0.6,
    0.9,
    0.3,
    -1.2,
    -0.6,
    -0.9,
    -1.2,
    -1.2,
    -0.6,
    -1.2,
    -0.9,
    0.9,
    0.6,
    0.3,
    0.9,
    0.9,
    0.6,
    0.9,
    0.9,
    -0.3,
    -0.6,
    -0.3,
    -1.2,
    -1.2,
    -0.9,
    -1.2,
]
LSQ_NET_T_INSIDE = [1, 0, 1, 0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1]
LSQ_NET_T_GS = -0.012708314
LSQ_NET_C_S0 = [0.031384181, 0.022631872, 0.021817368, 0.028146574]
LSQ_NET_C_CODES = [
    1,
    1,
    0,
    2,
    2,
    1,
    1,
    2,
    1,
    0,
    1,
    0,
    -2,
    -1,
    -1,
    -3,
    -3,
    -1,
    -2,
    -2,
    1,
    0,
    0,
    2,
    2,
    1,
    2,
    3,
    1,
    1,
    2,
    0,
]
LSQ_NET_C_GS = [-0.0039527137, 0.036962789, -0.0093860263, 0.045721903]


def test_lsq_matches_lsq_net_per_tensor_step(golden):
    x = (golden.wave(4, 8) * 1.5).requires_grad_()
    up = golden.wave(4, 8, a=0.53, b=0.7)
    s = torch.tensor([[0.3]], requires_grad=True)
    y = lsq_fake_quantize(x, QuantSpec(3, granularity="tensor", group_size=None), s, 1 / math.sqrt(32 * 3))
    (y * up).sum().backward()
    assert torch.allclose(y, torch.tensor(LSQ_NET_T_Y).reshape(4, 8), atol=1e-6)
    assert torch.equal(x.grad, torch.where(torch.tensor(LSQ_NET_T_INSIDE).bool().reshape(4, 8), up, 0.0))
    assert s.grad.item() == pytest.approx(LSQ_NET_T_GS, rel=1e-4)


def test_lsq_matches_lsq_net_per_row_step_up_to_its_gradient_scale(golden):
    """Init, codes and input gradient agree; the step gradient is lsq-net's times sqrt(rows): lsq-net scales a
    per-channel step's gradient by ``1/sqrt(numel·Q_P)`` of the whole tensor, qscale by the values sharing the
    step (LSQ's g for a step that aggregates N values; QVGen's LSQ does the same)."""
    w = golden.wave(4, 8, a=0.29, b=0.3) * 0.05
    q = LSQWeightQuantizer(w, QuantSpec(4, granularity="channel", group_size=None, grid="full"))
    assert torch.allclose(q.step.detach().flatten(), torch.tensor(LSQ_NET_C_S0), rtol=1e-6)
    wv = w.clone().requires_grad_()
    y = q(wv)
    (y * golden.wave(4, 8, a=0.53, b=0.7)).sum().backward()
    assert torch.equal((y / q.step).detach().round(), torch.tensor(LSQ_NET_C_CODES, dtype=torch.float32).reshape(4, 8))
    assert torch.equal(wv.grad, golden.wave(4, 8, a=0.53, b=0.7))  # nothing clipped at the LSQ init
    assert torch.allclose(q.step.grad.flatten(), torch.tensor(LSQ_NET_C_GS) * math.sqrt(4), rtol=1e-5)


# LSQ+ has no public code of its authors: golden values of its equations (Bhalgat et al. 2020, eq. 3-5: x̂ =
# round(clip((x − β)/s, n, p))·s + β, ∂x̂/∂s = round(u) − u inside / n below / p above, ∂x̂/∂β = 0 inside / 1
# outside) written out in numpy in a scratch folder, independently of qscale. 3 bits: n = −4, p = 3.
LSQ_PLUS_Y = [0.8, 1.05, 1.05, 1.05, 1.05, 1.05, 0.8, 1.05, 0.8, -0.7, -0.2, -0.45, -0.7, -0.7, -0.2, -0.7]
LSQ_PLUS_INSIDE = [1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0]
LSQ_PLUS_GS, LSQ_PLUS_GB = -0.67942153, 2.3349932


def test_lsq_plus_matches_the_paper_equations(golden):
    x = (golden.wave(16) * 1.5 + 0.4).double().requires_grad_()
    up = golden.wave(16, a=0.53, b=0.7).double()
    s = torch.tensor([[0.25]], dtype=torch.float64, requires_grad=True)
    beta = torch.tensor([[0.3]], dtype=torch.float64, requires_grad=True)
    y = lsq_fake_quantize(x, SPEC, s, 1.0, beta)
    (y * up).sum().backward()
    assert torch.allclose(y, torch.tensor(LSQ_PLUS_Y, dtype=torch.float64), atol=1e-12)
    assert torch.equal(x.grad, torch.where(torch.tensor(LSQ_PLUS_INSIDE).bool(), up, 0.0))
    assert s.grad.item() == pytest.approx(LSQ_PLUS_GS, rel=1e-6)
    assert beta.grad.item() == pytest.approx(LSQ_PLUS_GB, rel=1e-6)


def test_a_step_driven_through_zero_keeps_quantizing_with_its_magnitude(golden):
    """Adam moves a step by about the learning rate whatever its size, so a small step can turn negative: the
    quantizer then uses |s| (values and the frozen codes), and the step still gets a gradient (sign-corrected)."""
    w = golden.wave(4, 8, a=0.29, b=0.3) * 0.05
    q = LSQWeightQuantizer(w, QuantSpec(4, granularity="channel", group_size=None, grid="full"))
    positive = q(w).detach()
    with torch.no_grad():
        q.step.neg_()
    wv = w.clone().requires_grad_()
    y = q(wv)
    assert torch.equal(y.detach(), positive) and torch.equal(q.freeze(w).dequantize(), positive)
    up = golden.wave(4, 8, a=0.53, b=0.7)
    (y * up).sum().backward()
    assert torch.equal(wv.grad, up) and bool(q.step.grad.abs().gt(0).all())
    q_pos = LSQWeightQuantizer(w, QuantSpec(4, granularity="channel", group_size=None, grid="full"))
    (q_pos(w) * up).sum().backward()
    assert torch.allclose(q.step.grad, -q_pos.step.grad)
