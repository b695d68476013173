"""Complex 2-bit weights in {±1, ±i} (iFairy's PhaseQuant) on real layers read as widely-linear complex maps.

A real layer ``y = W x`` with even ``in``/``out`` reads its vectors as complex, ``z = x[:in/2] + i·x[in/2:]``
(and likewise ``y``). Every real ``W`` is exactly a *widely-linear* complex map ``y = U z + V z̄``
(Fairy2i, Wang et al. 2025, arXiv 2512.02901): with ``W = [[W11, W12], [W21, W22]]``,
``U = ((W11 + W22) + i(W21 − W12))/2`` and ``V = ((W11 − W22) + i(W21 + W12))/2``.

PhaseQuant (iFairy, 2025): each complex entry maps to the fourth root of unity nearest in phase
(code 0 → 1, 1 → i, 2 → −1, 3 → −i), times ``s_re = mean|Re|`` of the entries coded ±1 or ``s_im = mean|Im|``
of those coded ±i (one pair of scales per matrix). Two stages (Fairy2i's residual quantization: the second
quantizes what the first missed) give each of ``U`` and ``V`` two 2-bit codes per entry: ``out·in`` codes of
2 bits per layer, the storage of a 2-bit real layout (BitNet b1.58's packing).

Layout "complex-phase" of a ``QuantizedWeight`` ``[out, in]``: codes in 0..3 with the four ``[out/2, in/2]``
blocks ``[[U₁, U₂], [V₁, V₂]]`` (row half: U/V; column half: stage), ``extras["phase_scale"]``
``[2 stages, 2 (U, V), 2 (s_re, s_im)]``. :func:`mulfree_linear` computes the layer with additions,
negations and real/imaginary swaps only (one multiply per output and scale at the end).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from qscale.errors import require

STAGES = 2


def widely_linear(w: Tensor) -> tuple[Tensor, Tensor]:
    """``(U, V)`` complex ``[out/2, in/2]`` of the real ``w`` ``[out, in]`` (exact)."""
    o, i = w.shape[0] // 2, w.shape[1] // 2
    w11, w12, w21, w22 = w[:o, :i], w[:o, i:], w[o:, :i], w[o:, i:]
    return torch.complex((w11 + w22) / 2, (w21 - w12) / 2), torch.complex((w11 - w22) / 2, (w21 + w12) / 2)


def real_from_widely(u: Tensor, v: Tensor) -> Tensor:
    """The real ``[out, in]`` matrix of ``z ↦ U z + V z̄`` (inverse of :func:`widely_linear`)."""
    top = torch.cat([u.real + v.real, v.imag - u.imag], dim=1)
    bottom = torch.cat([u.imag + v.imag, u.real - v.real], dim=1)
    return torch.cat([top, bottom], dim=0)


def phase_codes(z: Tensor) -> Tensor:
    """Code of the nearest fourth root of unity in phase (0: 1, 1: i, 2: −1, 3: −i), int64."""
    re, im = z.real, z.imag
    along_re = re.abs() >= im.abs()
    return torch.where(along_re, torch.where(re >= 0, 0, 2), torch.where(im >= 0, 1, 3))


def phase_values(codes: Tensor, s_re: Tensor, s_im: Tensor) -> Tensor:
    """Complex values of codes with scales: ±s_re or ±i·s_im."""
    re = torch.where(codes == 0, 1.0, torch.where(codes == 2, -1.0, 0.0)) * s_re
    im = torch.where(codes == 1, 1.0, torch.where(codes == 3, -1.0, 0.0)) * s_im
    return torch.complex(re.float(), im.float())


def phase_quantize(z: Tensor) -> tuple[Tensor, Tensor]:
    """PhaseQuant of a complex matrix: codes and ``[s_re, s_im]`` (each the mean magnitude of its axis)."""
    codes = phase_codes(z)
    on_re, on_im = codes % 2 == 0, codes % 2 == 1
    s_re = z.real.abs()[on_re].mean() if bool(on_re.any()) else z.real.new_zeros(())
    s_im = z.imag.abs()[on_im].mean() if bool(on_im.any()) else z.imag.new_zeros(())
    return codes, torch.stack([s_re, s_im]).float()


def residual_phase_quantize(z: Tensor) -> tuple[list[Tensor], Tensor]:
    """``STAGES`` PhaseQuant stages, each of the residual of the previous: codes and scales ``[STAGES, 2]``."""
    codes, scales, rest = [], [], z
    for _ in range(STAGES):
        c, s = phase_quantize(rest)
        codes.append(c)
        scales.append(s)
        rest = rest - phase_values(c, s[0], s[1])
    return codes, torch.stack(scales)


def check_even(out_features: int, in_features: int) -> None:
    require(
        out_features % 2 == 0 and in_features % 2 == 0,
        f"complex layers need even in/out features (real and imaginary halves), got [{out_features}, {in_features}]",
    )


def pack_layout(w: Tensor) -> tuple[Tensor, Tensor]:
    """Codes ``[out, in]`` (uint8, blocks ``[[U₁, U₂], [V₁, V₂]]``) and ``phase_scale`` ``[2, 2, 2]`` of real ``w``."""
    check_even(*w.shape)
    u, v = widely_linear(w.float())
    (u1, u2), su = residual_phase_quantize(u)
    (v1, v2), sv = residual_phase_quantize(v)
    codes = torch.cat([torch.cat([u1, u2], 1), torch.cat([v1, v2], 1)], 0).to(torch.uint8)
    return codes, torch.stack([su, sv], dim=1)


def unpack_layout(codes: Tensor, phase_scale: Tensor) -> tuple[Tensor, Tensor]:
    """``(U, V)`` complex ``[out/2, in/2]`` of a "complex-phase" weight (sum of its stages)."""
    o, i = codes.shape[0] // 2, codes.shape[1] // 2
    c = codes.long()
    blocks = {(m, s): c[m * o : (m + 1) * o, s * i : (s + 1) * i] for m in range(2) for s in range(STAGES)}
    u = sum(phase_values(blocks[0, s], phase_scale[s, 0, 0], phase_scale[s, 0, 1]) for s in range(STAGES))
    v = sum(phase_values(blocks[1, s], phase_scale[s, 1, 0], phase_scale[s, 1, 1]) for s in range(STAGES))
    return cast(Tensor, u), cast(Tensor, v)  # sums of STAGES >= 1 tensors, never the start value 0


def dequantize_layout(codes: Tensor, phase_scale: Tensor) -> Tensor:
    """The real ``[out, in]`` weight of a "complex-phase" layout."""
    return real_from_widely(*unpack_layout(codes, phase_scale))


def _code_sums(xr: Tensor, xi: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
    """``Σ_k c_jk·z_k`` per output ``j`` for unit codes (no scale) using gathers, additions and swaps."""
    out_r = xr.new_zeros(*xr.shape[:-1], codes.shape[0])
    out_i = xr.new_zeros(*xr.shape[:-1], codes.shape[0])
    for code, (src_r, src_i, sign_r, sign_i) in enumerate(
        ((xr, xi, 1, 1), (xi, xr, -1, 1), (xr, xi, -1, -1), (xi, xr, 1, -1))
    ):
        rows, cols = (codes == code).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        # c·z for c = 1: (r, i); i: (−i, r); −1: (−r, −i); −i: (i, −r) — a swap and/or negations
        add_r, add_i = src_r[..., cols], src_i[..., cols]
        out_r.index_add_(-1, rows, add_r if sign_r > 0 else -add_r)
        out_i.index_add_(-1, rows, add_i if sign_i > 0 else -add_i)
    return out_r, out_i


def _scaled(codes: Tensor, s: Tensor, xr: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
    """``Σ_k q_jk·z_k`` with ``q = ±s_re`` or ``±i·s_im``: code sums of the real- and imaginary-coded parts,
    each scaled once per output."""
    real_part = torch.where(codes % 2 == 0, codes, -1)  # -1: matches no code
    imag_part = torch.where(codes % 2 == 1, codes, -1)
    rr, ri = _code_sums(xr, xi, real_part)
    ir, ii = _code_sums(xr, xi, imag_part)
    return s[0] * rr + s[1] * ir, s[0] * ri + s[1] * ii


def mulfree_linear(x: Tensor, codes: Tensor, phase_scale: Tensor) -> Tensor:
    """``y = Σ_stages (U_s z + V_s z̄)`` on the real view ``x`` ``[..., in]`` → ``[..., out]``, multiplication-free
    in the weights (conjugation = negating the imaginary half)."""
    o, i = codes.shape[0] // 2, codes.shape[1] // 2
    xr, xi = x[..., :i], x[..., i:]
    yr = x.new_zeros(*x.shape[:-1], o)
    yi = x.new_zeros(*x.shape[:-1], o)
    for s in range(STAGES):
        for m, (zr, zi) in enumerate(((xr, xi), (xr, -xi))):
            block = codes[m * o : (m + 1) * o, s * i : (s + 1) * i].long()
            ar, ai = _scaled(block, phase_scale[s, m], zr, zi)
            yr, yi = yr + ar, yi + ai
    return torch.cat([yr, yi], dim=-1)
