"""Fused fake quantization for QAT: which backend computes the ``ste``, ``lsq`` and ``quest`` quantizers.

Backends (same values as the plain torch definitions of ``qscale.quant.core`` / ``qscale.qat.lsq``):

- ``torch``: the plain definitions, several elementwise passes (CPU default).
- ``triton``: one kernel per quantizer pass (:mod:`qscale.quant.fq_triton`): the ``ste`` forward reads the input
  once and writes ``x̂`` (its gradient is the identity, no kernel needed); LSQ's forward and its backward
  (input gradient plus the step/offset reductions of LSQ eq. 3) are one kernel each, and only the input is
  saved for the backward instead of three tensors. Computes in float32 (a bf16 activation's ``x̂`` is the
  float32 result rounded once to bf16). CUDA default when triton is installed (extra ``gpu``).
- ``compile``: the plain definitions under ``torch.compile`` (inductor fuses the elementwise passes): CUDA
  default without triton.

Inside a ``torch.compile``'d model (``qscale train --compile``, the benches on CUDA) the plain definition is
traced, and inductor fuses it with the surrounding ops. ``QSCALE_FAKE_QUANT=torch|compile|triton`` forces a
backend (the tests run ``triton`` on CPU through ``TRITON_INTERPRET=1``; benchmarks compare backends).
QuEST: the rounding and its trust mask are one Triton kernel (the per-row RMS stays a torch reduction).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from collections.abc import Callable

import torch
from torch import Tensor

from qscale.errors import require
from qscale.quant.core import fake_quantize, grouped, require_finite, ungrouped
from qscale.quant.spec import QuantSpec

BACKENDS = ("torch", "compile", "triton")
ENV = "QSCALE_FAKE_QUANT"


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend_for(t: Tensor) -> str:
    """The fake-quantization backend for a tensor on ``t``'s device (``$QSCALE_FAKE_QUANT`` if set)."""
    if torch.compiler.is_compiling():
        return "torch"  # inside a compiled model inductor fuses the plain definition with its neighbours
    forced = os.environ.get(ENV)
    if forced:
        require(forced in BACKENDS, f"${ENV} must be one of {', '.join(BACKENDS)}, got {forced!r}")
        require(forced != "triton" or triton_available(), f"${ENV}=triton but triton is not installed")
        return forced
    if t.device.type != "cuda":
        return "torch"
    return "triton" if triton_available() else "compile"


@functools.cache
def _kernels():
    """The Triton kernel module, imported on first use (so ``TRITON_INTERPRET`` is read then)."""
    return importlib.import_module("qscale.quant.fq_triton")


@functools.cache
def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)``, built once per function."""
    return torch.compile(fn, dynamic=True)


def _rows(xg: Tensor) -> Tensor:
    return xg.reshape(-1, xg.shape[-1]).contiguous()


def _absmax_triton(x: Tensor, spec: QuantSpec) -> Tensor | None:
    """``fake_quantize(x, spec)`` by the Triton kernel; None where the kernel does not apply."""
    if not spec.symmetric or spec.granularity == "tensor":
        return None
    xg = grouped(x, spec)
    if xg.shape[-1] > _kernels().MAX_ROW:
        return None
    if spec.bits == 1:
        mult, div, zero = 1.0, 1.0, -0.5
    elif spec.grid == "full":
        mult, div, zero = float(torch.tensor(2.0 / (2**spec.bits - 1), dtype=torch.float32)), 1.0, 0.0
    else:
        mult, div, zero = 1.0, float(spec.qmax), 0.0
    y, scale = _kernels().absmax_fake_quant(_rows(xg), mult, div, zero, spec.qmin, spec.qmax)
    require_finite(scale, "values")
    return ungrouped(y.reshape(xg.shape), spec, x.shape)


def fused_fake_quantize(x: Tensor, spec: QuantSpec) -> Tensor:
    """``fake_quantize(x, spec)`` (no gradient) by the backend of ``x``'s device."""
    backend = backend_for(x)
    if backend == "triton":
        y = _absmax_triton(x, spec)
        if y is not None:
            return y
    if backend == "compile":
        return compiled(fake_quantize)(x, spec)
    return fake_quantize(x, spec)


class _LSQTriton(torch.autograd.Function):
    """LSQ(+) on a grouped view by the Triton kernels (gradients of LSQ eq. 3, as ``qscale.qat.lsq._LSQ``)."""

    @staticmethod
    def forward(ctx, vg: Tensor, s: Tensor, beta: Tensor | None, spec: QuantSpec, g: float) -> Tensor:
        K = _kernels()
        rows = vg.reshape(s.numel(), -1).contiguous()
        s_rows = s.reshape(-1).contiguous()
        b_rows = None if beta is None else beta.reshape(-1).contiguous()
        ctx.save_for_backward(rows, s, beta)
        ctx.spec, ctx.g, ctx.shape = spec, g, vg.shape
        return K.lsq_forward(rows, s_rows, b_rows, spec.qmin, spec.qmax).reshape(vg.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, s, beta = ctx.saved_tensors
        grad_rows = grad.reshape(rows.shape).contiguous()
        b_rows = None if beta is None else beta.reshape(-1).contiguous()
        grad_v, sum_s, sum_b = _kernels().lsq_backward(
            grad_rows, rows, s.reshape(-1).contiguous(), b_rows, ctx.spec.qmin, ctx.spec.qmax
        )
        grad_s = (sum_s.reshape(s.shape) / s.float() * ctx.g).to(s.dtype)
        grad_b = None if beta is None else sum_b.reshape(beta.shape).to(beta.dtype)
        return grad_v.reshape(ctx.shape), grad_s, grad_b, None, None


def lsq_triton_applies(vg: Tensor, s: Tensor) -> bool:
    """True when each parameter of ``s`` covers whole rows of ``vg``'s last dimension (the kernels' layout):
    one step per row / group (weights) or one for the whole tensor (activations)."""
    return s.numel() == 1 or (s.shape[-1] == 1 and tuple(s.shape[:-1]) == tuple(vg.shape[:-1]))


def lsq_triton(vg: Tensor, s: Tensor, beta: Tensor | None, spec: QuantSpec, g: float) -> Tensor:
    return _LSQTriton.apply(vg, s, beta, spec, g)


def quest_triton(x: Tensor, step: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """QuEST's ``x̂`` (``x``'s dtype) and trust mask for rows of ``x`` with float32 steps ``[..., 1]`` (zero
    ``levels/2``), by one Triton kernel (the RMS per row stays a torch reduction, so values equal the plain path)."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    y, mask = _kernels().quest_round(rows, step.reshape(-1).contiguous(), levels / 2, levels)
    return y.reshape(x.shape), mask.reshape(x.shape)
