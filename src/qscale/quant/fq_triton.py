"""Triton kernels of the fused QAT fake quantizers (the ``triton`` backend of :mod:`qscale.quant.fused`).

Imported only when that backend is chosen (CUDA with triton installed, or ``QSCALE_FAKE_QUANT=triton``; on
CPU with ``TRITON_INTERPRET=1``, set before this module is imported, as the tests do). Every kernel computes
in float32 on rows of a contiguous ``[R, G]`` grouped view (``qscale.quant.grouped``) and reproduces the plain
torch definitions of ``qscale.quant.core`` (SPEC §6) element for element: IEEE-rounded division (``div_rn``)
and round-half-to-even written out (``floor`` plus a tie test), since ``libdevice.rint`` has no interpreter
implementation.

- ``absmax_fake_quant``: RTN with data-derived symmetric parameters (the ``ste`` recipe's forward): one program
  per row computes the row's absmax, its scale (restricted/full grid, or the 1-bit sign grid) and ``x̂``.
- ``lsq_forward`` / ``lsq_backward``: LSQ(+) with a learned step (and offset) per row (Esser et al. 2020,
  eq. 1-3); the backward writes the input gradient and per-block partial sums of the step (and offset)
  gradients, reduced over blocks by the caller.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_ROW = 16384  # longest row one program of ``absmax_fake_quant`` holds (longer rows use another backend)
_BLOCK = 1024


@triton.jit
def _round_half_even(u):
    r = tl.floor(u)
    f = u - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    up = (f > 0.5) | ((f == 0.5) & odd)
    return tl.where(up, r + 1.0, r)


@triton.jit
def _round_to_bf16(y):
    """float32 -> nearest bf16 (ties to even) as a float32 whose low 16 bits are 0, so the final downcast is exact
    (the interpreter's own downcast truncates); finite input."""
    bits = y.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _store(ptr, y, mask, OUT_BF16: tl.constexpr):
    if OUT_BF16:
        y = _round_to_bf16(y)
    tl.store(ptr, y.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _absmax_fq_kernel(
    x_ptr, y_ptr, scale_ptr, G, mult, div, zero, qmin, qmax, OUT_BF16: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    m = offs < G
    x = tl.load(x_ptr + row * G + offs, mask=m, other=0.0).to(tl.float32)
    absmax = tl.max(tl.abs(x), axis=0)
    finite = tl.min(tl.where(tl.abs(x) < float("inf"), 1.0, 0.0), axis=0)  # 0 if a NaN/Inf is in the row
    scale = tl.math.div_rn(absmax * mult, div)
    scale = tl.where(finite > 0.0, scale, float("nan"))  # caught by the caller's check of the scales
    safe = tl.where(scale > 0.0, scale, 1.0)
    u = tl.math.div_rn(x, safe) + zero
    q = tl.minimum(tl.maximum(_round_half_even(u), qmin), qmax)
    y = (q - zero) * scale
    _store(y_ptr + row * G + offs, y, m, OUT_BF16)
    tl.store(scale_ptr + row, scale)


def absmax_fake_quant(xg: Tensor, mult: float, div: float, zero: float, qmin: int, qmax: int) -> tuple[Tensor, Tensor]:
    """``x̂`` (in ``xg``'s dtype) and the per-row scales of a contiguous ``[R, G]`` view, ``G <= MAX_ROW``."""
    R, G = xg.shape
    y = torch.empty_like(xg)
    scale = torch.empty(R, dtype=torch.float32, device=xg.device)
    _absmax_fq_kernel[(R,)](
        xg,
        y,
        scale,
        G,
        float(mult),
        float(div),
        float(zero),
        float(qmin),
        float(qmax),
        OUT_BF16=xg.dtype == torch.bfloat16,
        BLOCK=triton.next_power_of_2(G),
    )
    return y, scale


@triton.jit
def _lsq_codes(v_ptr, s_ptr, b_ptr, row, offs, m, G, qmin, qmax, HAS_BETA: tl.constexpr):
    """One row block's LSQ(+) codes: (v − β, s, β, q = clamp(round_half_even((v − β) / s), qmin, qmax))."""
    v = tl.load(v_ptr + row * G + offs, mask=m, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + row).to(tl.float32)
    beta = tl.load(b_ptr + row).to(tl.float32) if HAS_BETA else 0.0
    shifted = v - beta
    safe = tl.where(s > 0.0, s, 1.0)
    q = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(shifted, safe)), qmin), qmax)
    return shifted, s, beta, q


@triton.jit
def _lsq_fwd_kernel(
    v_ptr, s_ptr, b_ptr, y_ptr, G, qmin, qmax, HAS_BETA: tl.constexpr, OUT_BF16: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < G
    _, s, beta, q = _lsq_codes(v_ptr, s_ptr, b_ptr, row, offs, m, G, qmin, qmax, HAS_BETA)
    y = q * s + beta
    _store(y_ptr + row * G + offs, y, m, OUT_BF16)


@triton.jit
def _lsq_bwd_kernel(
    g_ptr,
    v_ptr,
    s_ptr,
    b_ptr,
    gv_ptr,
    ps_ptr,
    pb_ptr,
    G,
    C,
    qmin,
    qmax,
    HAS_BETA: tl.constexpr,
    OUT_BF16: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < G
    grad = tl.load(g_ptr + row * G + offs, mask=m, other=0.0).to(tl.float32)
    shifted, s, _, q = _lsq_codes(v_ptr, s_ptr, b_ptr, row, offs, m, G, qmin, qmax, HAS_BETA)
    inside = (shifted >= qmin * s) & (shifted <= qmax * s)
    grad_v = tl.where(inside, grad, 0.0)
    _store(gv_ptr + row * G + offs, grad_v, m, OUT_BF16)
    tl.store(ps_ptr + row * C + blk, tl.sum(grad * (q * s), axis=0) - tl.sum(grad_v * shifted, axis=0))
    if HAS_BETA:
        tl.store(pb_ptr + row * C + blk, tl.sum(grad - grad_v, axis=0))


def lsq_forward(vg: Tensor, step: Tensor, beta: Tensor | None, qmin: int, qmax: int) -> Tensor:
    """LSQ(+) ``v̂`` of a contiguous ``[R, G]`` view with one step (and offset) per row (``[R]`` tensors)."""
    R, G = vg.shape
    y = torch.empty_like(vg)
    grid = (R, triton.cdiv(G, _BLOCK))
    _lsq_fwd_kernel[grid](
        vg,
        step,
        step if beta is None else beta,
        y,
        G,
        float(qmin),
        float(qmax),
        HAS_BETA=beta is not None,
        OUT_BF16=vg.dtype == torch.bfloat16,
        BLOCK=_BLOCK,
    )
    return y


def lsq_backward(
    grad: Tensor, vg: Tensor, step: Tensor, beta: Tensor | None, qmin: int, qmax: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Input gradient ``[R, G]`` and, per row, ``Σ g·(v̂ − β) − Σ g_v·(v − β)`` and ``Σ (g − g_v)``
    (float32)."""
    R, G = vg.shape
    C = triton.cdiv(G, _BLOCK)
    grad_v = torch.empty_like(vg)
    ps = torch.empty(R, C, dtype=torch.float32, device=vg.device)
    pb = torch.empty(R, C, dtype=torch.float32, device=vg.device) if beta is not None else ps
    _lsq_bwd_kernel[(R, C)](
        grad,
        vg,
        step,
        step if beta is None else beta,
        grad_v,
        ps,
        pb,
        G,
        C,
        float(qmin),
        float(qmax),
        HAS_BETA=beta is not None,
        OUT_BF16=vg.dtype == torch.bfloat16,
        BLOCK=_BLOCK,
    )
    return grad_v, ps.sum(-1), (pb.sum(-1) if beta is not None else None)


@triton.jit
def _quest_kernel(x_ptr, step_ptr, y_ptr, m_ptr, G, zero, qmax, OUT_BF16: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < G
    x = tl.load(x_ptr + row * G + offs, mask=m, other=0.0).to(tl.float32)
    step = tl.load(step_ptr + row)
    safe = tl.where(step > 0.0, step, 1.0)
    q = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(x, safe) + zero), 0.0), qmax)
    y = (q - zero) * step
    _store(y_ptr + row * G + offs, y, m, OUT_BF16)
    tl.store(m_ptr + row * G + offs, (tl.abs(y - x) <= step / 2).to(tl.uint8), mask=m)


def quest_round(xr: Tensor, step: Tensor, zero: float, qmax: int) -> tuple[Tensor, Tensor]:
    """QuEST's ``x̂`` (in ``xr``'s dtype) and trust mask of a contiguous ``[R, G]`` view with one float32 step
    per row (``[R]``): ``round_to_grid`` with the half-integer zero, and ``|x̂ − x| <= step/2``."""
    R, G = xr.shape
    y = torch.empty_like(xr)
    mask = torch.empty(R, G, dtype=torch.uint8, device=xr.device)
    _quest_kernel[(R, triton.cdiv(G, _BLOCK))](
        xr, step, y, mask, G, float(zero), float(qmax), OUT_BF16=xr.dtype == torch.bfloat16, BLOCK=_BLOCK
    )
    return y, mask.view(torch.bool)
