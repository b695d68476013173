"""``lsq``: learned step size quantization (LSQ, Esser et al. 2020, arXiv 1902.08153; SPEC §6) and LSQ+
(Bhalgat et al. 2020, arXiv 2004.09576) with a learned activation offset.

Forward (LSQ eq. 1-2): ``v̂ = round(clip(v/s, −Q_N, Q_P))·s`` on the shared core's symmetric grid
(``Q_N = 2^(b−1)``, ``Q_P = 2^(b−1) − 1``); LSQ+: ``v̂ = round(clip((v − β)/s, −Q_N, Q_P))·s + β``.
Backward (LSQ eq. 3, straight-through for the rounding): ``∂v̂/∂v = 1`` inside the range, 0 outside;
``∂v̂/∂s = round(v/s) − v/s`` inside, ``−Q_N`` / ``Q_P`` below / above; the step gradient is multiplied by
``g = 1/sqrt(N·Q_P)`` (LSQ's gradient scale) where N is the number of values sharing the step (weights: the group or
row; activations: the layer's input features, the paper's N_F); LSQ+: ``∂v̂/∂β = 0`` inside, 1 outside.
Grid: LSQ's own signed range ``[−Q_N, Q_P]`` (all 2^b codes) with a learned step, so the frozen codes are
symmetric codes of the full PTQ grid's layout. Init (LSQ): ``s = 2·mean|v|/sqrt(Q_P)`` — per weight group at
``prepare``, per layer input from the first batch seen; LSQ+ (its min/max initialization):
``s = (max − min)/(Q_P + Q_N)``, ``β = min + Q_N·s``.

LSQ has no official code; forward values, input and step gradients agree with the widely used zhutmost/lsq-net
(tests/qat/test_lsq.py). One reading differs on purpose: the paper has one step per layer and
``g = 1/sqrt(N_W·Q_P)`` with N_W the layer's weights; for a step per row or group, lsq-net keeps N = all of the
tensor's values, qscale takes N = the values sharing the step (the paper's reason for g — a step's gradient sums
N terms — applied to each step; QVGen's LSQ does the same), so a per-row step's gradient is sqrt(rows) times
lsq-net's. For activations lsq-net takes N = every value of the batch, qscale the paper's N_F (features per
token). LSQ+ has no public code; it is tested against its equations.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qscale.errors import require
from qscale.qat.linear import ActQuantizer, WeightQuantizer
from qscale.qat.registry import Recipe, register
from qscale.qat.ste import weight_spec
from qscale.quant import (
    QTensor,
    QuantizedWeight,
    QuantSpec,
    grid_codes,
    grouped,
    require_finite,
    round_to_grid,
    ungrouped,
)
from qscale.quant.fused import backend_for, compiled, lsq_triton, lsq_triton_applies


class _LSQ(torch.autograd.Function):
    """Grouped-view LSQ(+) quantizer with the gradients of LSQ eq. 3 (and LSQ+'s offset gradient).

    With codes ``q = round(clip(u))``, ``u = (v − β)/s``, the per-element step gradient is
    ``q − u·1[inside]`` (both cases of eq. 3 at once), so per step
    ``Σ g·∂v̂/∂s = (Σ g·(v̂ − β) − Σ g_v·(v − β))/s`` with ``g_v = g·1[inside]`` the input gradient: two
    multiply-reduce passes, no per-element temporaries.
    """

    @staticmethod
    def forward(ctx, vg: Tensor, s: Tensor, beta: Tensor | None, spec: QuantSpec, g: float) -> Tensor:
        zero = torch.zeros((), dtype=vg.dtype, device=vg.device)
        shifted = vg if beta is None else vg - beta
        out = round_to_grid(shifted, s, zero, spec)
        ctx.save_for_backward(shifted, s, out)
        ctx.spec, ctx.g, ctx.has_beta = spec, g, beta is not None
        return out if beta is None else out + beta

    @staticmethod
    def backward(ctx, grad: Tensor):
        shifted, s, out = ctx.saved_tensors
        spec = ctx.spec
        inside = (shifted >= spec.qmin * s) & (shifted <= spec.qmax * s)
        grad_v = torch.where(inside, grad, 0.0)
        grad_s = (_sum_prod(grad, out, s.shape) - _sum_prod(grad_v, shifted, s.shape)) / s * ctx.g
        grad_beta = None
        if ctx.has_beta:
            grad_beta = _reduce_to(grad, s.shape) - _reduce_to(grad_v, s.shape)
        return grad_v, grad_s, grad_beta, None, None


def _reduce_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``t`` over the dimensions along which a parameter of ``shape`` was broadcast."""
    lead = tuple(range(t.ndim - len(shape)))
    if lead:
        t = t.sum(dim=lead)
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1)
    return t.sum(dim=dims, keepdim=True) if dims else t


def _sum_prod(a: Tensor, b: Tensor, shape: torch.Size) -> Tensor:
    """``_reduce_to(a * b, shape)``; one fused dot product when a single parameter is shared by all."""
    if math.prod(shape) == 1:
        return torch.dot(a.reshape(-1), b.reshape(-1)).reshape(shape)
    return _reduce_to(a * b, shape)


def lsq_fake_quantize(
    v: Tensor, spec: QuantSpec, step: Tensor, grad_scale: float, offset: Tensor | None = None
) -> Tensor:
    """LSQ(+) fake quantization of ``v`` with step ``|step|`` (grouped-view shape of ``spec``); fused on CUDA
    (``qscale.quant.fused``: a Triton kernel for the forward and one for the backward, or ``torch.compile``).

    The magnitude: an optimizer step can drive a small learned step through zero (Adam moves it by about the
    learning rate whatever its size); a negative step would otherwise zero the layer's output and every gradient
    through it, silently. With ``|step|`` the quantizer keeps working and the step's gradient (sign-corrected by
    autograd) keeps flowing, like the mirror-image grid lsq-net's code gives a negative step.
    """
    step = step.abs()
    vg = grouped(v, spec)
    backend = backend_for(v)
    if backend == "triton" and lsq_triton_applies(vg, step):
        out = lsq_triton(vg, step, offset, spec, grad_scale)
    elif backend == "compile":
        out = compiled(_lsq_apply)(vg, step, offset, spec, grad_scale)
    else:
        out = _lsq_apply(vg, step, offset, spec, grad_scale)
    return ungrouped(out, spec, v.shape)


def _lsq_apply(vg: Tensor, step: Tensor, offset: Tensor | None, spec: QuantSpec, grad_scale: float) -> Tensor:
    return _LSQ.apply(vg, step, offset, spec, grad_scale)


def _check_lsq_bits(bits: int) -> None:
    require(bits >= 2, f"lsq needs at least 2 bits (Q_P = 2^(b-1) - 1 > 0), got {bits}")


class LSQWeightQuantizer(WeightQuantizer):
    """Learned per-group (or per-row) step, initialized from the weight; freezes to core QTensor fields."""

    def __init__(self, weight: Tensor, spec: QuantSpec):
        super().__init__()
        _check_lsq_bits(spec.bits)
        self.spec = spec
        with torch.no_grad():
            wg = grouped(weight.detach(), spec)
            count = grouped(torch.ones_like(weight), spec).sum(-1, keepdim=True)
            mean_abs = wg.abs().sum(-1, keepdim=True) / count
            step = (2 * mean_abs / math.sqrt(spec.qmax)).clamp_min(1e-8)
        self.step = nn.Parameter(step)
        self.grad_scale = 1.0 / math.sqrt(wg.shape[-1] * spec.qmax)

    def forward(self, w: Tensor) -> Tensor:
        require_finite(w, "a weight")
        return lsq_fake_quantize(w, self.spec, self.step, self.grad_scale)

    def freeze(self, w: Tensor) -> QuantizedWeight:
        step = self.step.detach().abs()
        zero = torch.zeros_like(step)
        codes = ungrouped(grid_codes(grouped(w, self.spec), step, zero, self.spec), self.spec, w.shape)
        return QuantizedWeight.from_qtensor(QTensor(codes.to(torch.int8), step, zero, self.spec, w.shape))


class LSQActQuantizer(ActQuantizer):
    """One learned step (and, for LSQ+, one learned offset) per layer input, initialized on the first batch."""

    def __init__(self, in_features: int, bits: int, offset: bool):
        super().__init__()
        _check_lsq_bits(bits)
        self.spec = QuantSpec(bits, symmetric=True, granularity="tensor", group_size=None)
        self.step = nn.Parameter(torch.ones(1, 1))
        self.offset = nn.Parameter(torch.zeros(1, 1)) if offset else None
        self.register_buffer("initialized", torch.tensor(False))
        self._needs_init = True  # Python mirror of ``initialized`` (no tensor branch in compiled code)
        self.in_features = in_features
        self.grad_scale = 1.0 / math.sqrt(in_features * self.spec.qmax)

    @torch.no_grad()
    def _init_from(self, x: Tensor) -> None:
        xf = x.float()
        qn, qp = -self.spec.qmin, self.spec.qmax
        if self.offset is None:
            step = 2 * xf.abs().mean() / math.sqrt(qp)
        else:
            lo, hi = xf.min(), xf.max()
            step = (hi - lo) / (qp + qn)
            self.offset.fill_(float(lo + qn * step.clamp_min(1e-8)))
        self.step.fill_(float(step.clamp_min(1e-8)))
        self.initialized.fill_(True)
        self._needs_init = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._needs_init = not bool(self.initialized)

    def forward(self, x: Tensor) -> Tensor:
        require_finite(x, "activations")
        if self._needs_init:
            self._init_from(x)
        step = self.step.to(x.dtype)
        offset = None if self.offset is None else self.offset.to(x.dtype)
        return lsq_fake_quantize(x, self.spec, step, self.grad_scale, offset)

    def describe(self) -> dict:
        return {
            "kind": "lsq",
            "bits": self.spec.bits,
            "in_features": self.in_features,
            "offset": self.offset is not None,
        }


@register
class LSQRecipe(Recipe):
    name = "lsq"
    default_bits = (4, 4)

    def check_bits(self, w_bits: int, a_bits: int) -> None:
        for b in (w_bits, a_bits):
            require(b >= 2, f"lsq needs 2..8 or 16 bits, got {b}")

    def weight_quantizer(self, weight, bits, cfg):
        return LSQWeightQuantizer(weight, weight_spec(bits, cfg.group_size, grid="full"))

    def act_quantizer(self, in_features, bits, cfg):
        return LSQActQuantizer(in_features, bits, cfg.lsq_plus)
