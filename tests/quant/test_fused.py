"""Fused fake quantization (``qscale.quant.fused``): the Triton kernels, run on CPU by Triton's interpreter,
against the plain torch definitions (forward values exactly, gradients to float32 rounding).
On CPU the kernels run through Triton's interpreter (``TRITON_INTERPRET=1``, set in tests/conftest.py); with
``TRITON_INTERPRET=0`` on a CUDA machine (bench/gpu_check.sh) the same tests run the compiled kernels on the GPU.
"""

import os

import pytest
import torch

from qscale.errors import QscaleError
from qscale.qat.lsq import LSQActQuantizer, LSQWeightQuantizer
from qscale.qat.quest import quest_fake_quantize
from qscale.qat.ste import act_spec, ste_fake_quantize, weight_spec
from qscale.quant import QuantSpec, fake_quantize
from qscale.quant.fused import ENV, backend_for, triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed (extra 'gpu')")
DEVICE = "cuda" if os.environ.get("TRITON_INTERPRET") == "0" and torch.cuda.is_available() else "cpu"


@pytest.fixture
def use(monkeypatch):
    def set_backend(name: str) -> None:
        monkeypatch.setenv(ENV, name)

    return set_backend


def test_backend_defaults_to_plain_torch_on_cpu(monkeypatch):
    """(On CUDA the default is triton, or torch.compile without it.)"""
    monkeypatch.delenv(ENV, raising=False)
    assert backend_for(torch.zeros(1)) == "torch"
    monkeypatch.setenv(ENV, "cuda-magic")
    with pytest.raises(QscaleError, match="QSCALE_FAKE_QUANT"):
        backend_for(torch.zeros(1))


SPECS = [
    weight_spec(4, 64),  # restricted grid, groups of 64, ragged last group below (200 % 64 != 0)
    weight_spec(4, None, grid="full"),  # per row, full GPTQ grid
    weight_spec(1, 32),  # sign grid, half-integer zero
    act_spec(8, None),  # per token
    act_spec(3, 16),
]


@needs_triton
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.bits}b-{s.granularity}-{s.group_size}-{s.grid}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ste_forward_equals_definition(use, spec, dtype):
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 200) * torch.rand(3, 5, 1) * 4).to(device=DEVICE, dtype=dtype)
    x[0, 0, :] = 0.0  # an all-zero row: scale 0, output exactly 0
    want = fake_quantize(x, spec)
    use("triton")
    xr = x.clone().requires_grad_()
    got = ste_fake_quantize(xr, spec)
    assert got.dtype == dtype
    assert torch.equal(got, want)
    got.backward(torch.arange(got.numel(), dtype=dtype, device=DEVICE).reshape(got.shape))
    upstream = torch.arange(got.numel(), dtype=dtype, device=DEVICE).reshape(got.shape)
    assert torch.equal(xr.grad, upstream)  # the identity STE


@needs_triton
def test_ste_ties_round_half_to_even(use):
    use("triton")
    spec = QuantSpec(4, symmetric=True, granularity="token", group_size=None, grid="restricted")  # qmax 7
    x = torch.tensor([[7.0, -6.5, -0.5, 0.5, 1.5, 2.5, 3.5, -2.5]], device=DEVICE)  # scale 1: most are ties
    got = ste_fake_quantize(x, spec)
    assert got.tolist() == [[7.0, -6.0, -0.0, 0.0, 2.0, 2.0, 4.0, -2.0]]
    assert torch.equal(got, fake_quantize(x, spec))


@needs_triton
def test_nan_is_an_error(use):
    use("triton")
    x = torch.ones(2, 64, device=DEVICE)
    x[1, 3] = float("nan")
    with pytest.raises(QscaleError, match="NaN"):
        ste_fake_quantize(x, act_spec(4, None))


def _lsq_grads(quantizer, x):
    x = x.clone().requires_grad_()
    y = quantizer(x)
    (y * torch.linspace(-1, 2, y.numel(), device=y.device).reshape(y.shape)).sum().backward()
    grads = {n: p.grad.clone() for n, p in quantizer.named_parameters()}
    quantizer.zero_grad()
    return y.detach(), x.grad, grads


@needs_triton
@pytest.mark.parametrize("group_size", [32, None])
def test_lsq_weight_forward_and_gradients_equal_definition(use, group_size):
    torch.manual_seed(1)
    w = torch.randn(24, 96, device=DEVICE)
    q = LSQWeightQuantizer(w, weight_spec(4, group_size, grid="full"))
    use("torch")
    y0, gx0, gp0 = _lsq_grads(q, w)
    use("triton")
    y1, gx1, gp1 = _lsq_grads(q, w)
    assert torch.equal(y1, y0)
    assert torch.equal(gx1, gx0)
    torch.testing.assert_close(gp1["step"], gp0["step"], rtol=1e-5, atol=1e-6)


@needs_triton
@pytest.mark.parametrize("offset", [False, True], ids=["lsq", "lsq+"])
def test_lsq_activation_forward_and_gradients_equal_definition(use, offset):
    torch.manual_seed(2)
    x = torch.randn(4, 300, 48, device=DEVICE) + 0.3  # 57 600 values share one step: several kernel blocks
    q = LSQActQuantizer(48, 4, offset).to(DEVICE)
    use("torch")
    y0, gx0, gp0 = _lsq_grads(q, x)
    use("triton")
    y1, gx1, gp1 = _lsq_grads(q, x)
    assert torch.equal(y1, y0)
    assert torch.equal(gx1, gx0)
    assert set(gp1) == set(gp0) == ({"step", "offset"} if offset else {"step"})
    for name in gp0:
        torch.testing.assert_close(gp1[name], gp0[name], rtol=1e-4, atol=1e-4)


@needs_triton
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quest_forward_and_trust_mask_equal_definition(use, bits, dtype):
    torch.manual_seed(3)
    x = (torch.randn(6, 33, 128) * 2).to(device=DEVICE, dtype=dtype)
    x[0, 0, :5] = 40.0  # outliers clipped beyond half a step: their gradient is dropped
    upstream = torch.randn(x.shape, device=DEVICE, dtype=dtype)
    out = {}
    for backend in ("torch", "triton"):
        use(backend)
        xr = x.clone().requires_grad_()
        y = quest_fake_quantize(xr, bits)
        y.backward(upstream)
        out[backend] = (y.detach(), xr.grad)
    assert torch.equal(out["triton"][0], out["torch"][0])
    assert torch.equal(out["triton"][1], out["torch"][1])
    assert (out["torch"][1] == 0).any()  # the trust mask is not all-true here
