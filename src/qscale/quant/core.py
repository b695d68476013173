"""Uniform integer quantization: parameters, codes, dequantization (SPEC §6).

``q = clamp(round(x/s + z), qmin, qmax)`` and ``x̂ = (q - z)·s``; for an integer ``z`` this is the
SPEC's ``clamp(round(x/s) + z, ...)``. Conventions (round-to-nearest, ties to even):

- symmetric, ``b >= 2``, grid "full" (default; GPTQ/compressed-tensors): ``s = 2·absmax / (2^b - 1)``,
  ``z = 0``, every code in ``[-2^(b-1), 2^(b-1) - 1]`` is used (``+absmax`` clamps to the top code, an
  error of at most s/2).
- symmetric, ``b >= 2``, grid "restricted": ``s = absmax / (2^(b-1) - 1)``; the code ``-2^(b-1)`` is in
  range but never produced from the data's own scale (so 2 bits is ternary {-s, 0, s}).
- symmetric, ``b = 1``: ``s = absmax``, ``z = -1/2``, codes {-1, 0}, ``x̂ ∈ {-s/2, +s/2}``: a sign
  quantizer whose two levels are the midpoints of [-absmax, 0] and [0, absmax].
- asymmetric: the range is widened to contain 0 (``lo = min(x.min, 0)``, ``hi = max(x.max, 0)``),
  ``s = (hi - lo) / (2^b - 1)``, ``z = round(-lo / s)`` — an integer in [0, 2^b - 1], so 0 is exact.

In every case ``|x - x̂| <= s/2`` for every x the parameters were computed from. An all-zero row or
group gets the scale 0 (every code dequantizes to exactly 0); code computation divides by 1 in its
place. Non-finite input (NaN/Inf) is an error, never a code: a NaN would otherwise become code 0.

Layouts: the parameters have the shape of a "grouped view" of ``x`` reduced over its last dimension
(keepdim): tensor -> ``[1, 1]``; channel -> ``[out, 1]`` (``x`` flattened to ``[out, -1]``); token ->
``[..., 1]``; group -> ``[..., ceil(in/G), 1]``. A last group shorter than G (``in % G != 0``) is
allowed: it is padded with zeros when computing its parameters, which changes nothing because the
ranges above always contain 0. Arithmetic is done in float32 (or float64 for float64 input).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from qscale.errors import QscaleError, require
from qscale.quant.spec import QuantSpec


@dataclass
class QTensor:
    """Integer codes (``int8`` if symmetric, ``uint8`` if not) in ``x``'s shape plus their parameters."""

    codes: Tensor
    scale: Tensor
    zero: Tensor
    spec: QuantSpec
    shape: torch.Size


def require_finite(t: Tensor, what: str) -> None:
    """Raise ``QscaleError`` if ``t`` holds NaN or Inf (``what`` names it)."""
    if not bool(torch.isfinite(t).all()):
        raise QscaleError(f"cannot quantize {what} holding NaN or Inf")


def _work_dtype(x: Tensor) -> torch.dtype:
    require(x.is_floating_point(), f"can only quantize floating-point tensors, got {x.dtype}")
    return torch.promote_types(x.dtype, torch.float32)


def grouped(x: Tensor, spec: QuantSpec) -> Tensor:
    """View of ``x`` whose last dimension is the set of values sharing one scale."""
    g = spec.granularity
    if g == "tensor":
        return x.reshape(1, -1)
    require(x.ndim >= 1, f"granularity {g!r} needs a tensor with at least one dimension")
    if g == "channel":
        return x.reshape(x.shape[0], -1)
    if g == "token":
        return x
    G = spec.G
    n = x.shape[-1]
    pad = -n % G
    if pad:
        x = F.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], (n + pad) // G, G)


def ungrouped(xg: Tensor, spec: QuantSpec, shape: torch.Size) -> Tensor:
    """Inverse of :func:`grouped`: back to ``shape`` (dropping the padding of a ragged last group)."""
    if spec.granularity == "group":
        return xg.reshape(*shape[:-1], -1)[..., : shape[-1]]
    return xg.reshape(shape)


def _params(xg: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Scale and zero of each row of a grouped view (reduced over the last dimension, keepdim).

    NaN/Inf anywhere in a row makes its scale non-finite (``amax``/``amin`` propagate both), so checking
    the small scale tensor catches non-finite input without a second pass over ``xg``.
    """
    if spec.symmetric:
        absmax = xg.abs().amax(dim=-1, keepdim=True)
        if spec.bits == 1:
            scale = absmax
        elif spec.grid == "full":
            scale = absmax * (2.0 / (2**spec.bits - 1))
        else:
            scale = absmax / spec.qmax
        require_finite(scale, "values")
        zero = torch.full_like(scale, -0.5 if spec.bits == 1 else 0.0)
        return scale, zero
    lo = xg.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = xg.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / spec.qmax
    require_finite(scale, "values")
    zero = torch.round(-lo / _safe(scale)).clamp(spec.qmin, spec.qmax)
    return scale, zero


def _safe(scale: Tensor) -> Tensor:
    """The scale with zeros replaced by 1, for division (an all-zero group's codes are then ``z``)."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def compute_qparams(x: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Round-to-nearest scale and zero point of ``x`` for ``spec`` (shapes: see module docstring)."""
    return _params(grouped(x.to(_work_dtype(x)), spec), spec)


def grid_codes(x: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> Tensor:
    """``clamp(round(x/s + z), qmin, qmax)`` elementwise with broadcasting, as floats."""
    return torch.clamp(torch.round(x / _safe(scale) + zero), spec.qmin, spec.qmax)


def round_to_grid(x: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> Tensor:
    """``(grid_codes(x) - z)·s`` elementwise with broadcasting (no grouping).

    The building block of every quantizer here (GPTQ calls it one column at a time).
    """
    return (grid_codes(x, scale, zero, spec) - zero) * scale


def _given_params(scale: Tensor, zero: Tensor | None, spec: QuantSpec, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    scale = scale.to(dtype)
    if zero is None:
        require(spec.symmetric, "an asymmetric quantizer needs a zero point along with its scale")
        zero = torch.full_like(scale, -0.5 if spec.bits == 1 else 0.0)
    return scale, zero.to(dtype)


def quantize(x: Tensor, spec: QuantSpec, scale: Tensor | None = None, zero: Tensor | None = None) -> QTensor:
    """Integer codes of ``x``; parameters from ``compute_qparams`` unless given (grouped-view shapes)."""
    dtype = _work_dtype(x)
    xg = grouped(x.to(dtype), spec)
    if scale is not None:
        require_finite(x, "values")
        require_finite(scale, "a scale")
    if scale is None:
        require(zero is None, "a zero point was given without a scale")
        scale, zero = _params(xg, spec)
    else:
        scale, zero = _given_params(scale, zero, spec, dtype)
    codes = ungrouped(grid_codes(xg, scale, zero, spec), spec, x.shape)
    code_dtype = torch.int8 if spec.symmetric else torch.uint8
    return QTensor(codes=codes.to(code_dtype), scale=scale, zero=zero, spec=spec, shape=x.shape)


def dequantize(qt: QTensor) -> Tensor:
    """``(q - z)·s`` in ``qt.shape`` (float32, or float64 if the scale is)."""
    qg = grouped(qt.codes.to(qt.scale.dtype), qt.spec)
    return ungrouped((qg - qt.zero) * qt.scale, qt.spec, qt.shape)


def fake_quantize(x: Tensor, spec: QuantSpec) -> Tensor:
    """``dequantize(quantize(x, spec))`` computed in floating point, returned in ``x``'s dtype."""
    xg = grouped(x.to(_work_dtype(x)), spec)
    scale, zero = _params(xg, spec)
    return ungrouped(round_to_grid(xg, scale, zero, spec), spec, x.shape).to(x.dtype)
