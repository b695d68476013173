"""GPTQ for one linear layer (Frantar et al. 2022, arXiv 2210.17323, Algorithm 1; SPEC §6).

Minimises ``||XWᵀ - XQᵀ||²`` column by column: quantize column j, spread its error over the
not-yet-quantized columns with the inverse Hessian (eq. 3, using rows of the upper Cholesky factor
of ``H⁻¹``), in blocks of ``block_size`` columns with a lazy batch update of later columns. The result
is the integer ``QuantizedWeight`` every exporter reads; the symmetric grid is the spec's (by default
GPTQ's own, ``s = 2·absmax/(2^b − 1)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qscale.errors import QscaleError, require
from qscale.quant import QuantizedWeight, QuantSpec, compute_qparams, default_g_idx, grid_codes


@dataclass
class GPTQResult:
    """The quantized layer (``qweight``, original column order), GPTQ's own objective
    ``loss = Σ (w − q)² / (2 U_jj²)`` and the relative dampening ``damp`` finally used."""

    qweight: QuantizedWeight
    loss: float
    damp: float

    @property
    def weight(self) -> Tensor:
        """The dequantized ``[out, in]`` weight."""
        return self.qweight.dequantize()


# Dtypes the inverse is tried in, in order, at each dampening. Float32 first: on the Hessians of
# bench/hessian_precision.py (a 42M Llama's q_proj and down_proj inputs at 768 and 2048 columns, and two
# synthetic ones with outlier features, condition numbers 1e2 to 7e13) the layer output error
# tr(D H Dᵀ) / tr(W H Wᵀ) of float32 and float64 differ by 1e-8 to 6e-5 relative, either sign (0 to 0.1% of
# codes differ), while the float32 inverse takes half the time (0.6-0.8 s vs 1.1-1.6 s at 2048 columns on
# one CPU thread). Float64 is kept for a Hessian whose float32 factorisation fails, before more dampening.
INVERSE_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)


def hessian_inverse_cholesky(
    H: Tensor, damp: float, dtypes: tuple[torch.dtype, ...] | None = None
) -> tuple[Tensor, float]:
    """Upper Cholesky factor U of ``(H + λI)⁻¹``, ``λ = damp·mean(diag H)`` (float32 if it factorises).

    Each of ``dtypes`` (default :data:`INVERSE_DTYPES`) is tried in turn; if none factorises, ``damp`` is
    multiplied by 10 and tried again, up to ``damp = 1``.
    """
    dtypes = dtypes or INVERSE_DTYPES
    while damp <= 1:
        for dtype in dtypes:
            # one [in, in] buffer: damped H, then its factor L, then (H + λI)⁻¹, then U (same numbers as
            # allocating each: the factorisations write their outputs in place)
            A = H.to(dtype, copy=True)
            A.diagonal().add_(damp * A.diagonal().mean())
            info = torch.empty((), dtype=torch.int32, device=A.device)
            torch.linalg.cholesky_ex(A, out=(A, info))
            if info == 0:
                torch.cholesky_inverse(A, out=A)
                torch.linalg.cholesky_ex(A, upper=True, out=(A, info))
                if info == 0:
                    return A, damp
            del A
        damp *= 10
    raise QscaleError(f"GPTQ: Hessian is not positive definite even with dampening {damp / 10:g}")


def _fixed_params(Wt: Tensor, spec: QuantSpec, row_splits: list[int]) -> tuple[Tensor, Tensor]:
    """Parameters computed once from the (dead-column-zeroed) weight ``Wt`` ``[in, out]``: ``[out, n_groups]``.

    "tensor": one scale per segment of ``row_splits`` (layers stacked for one Hessian keep their own);
    "channel": one per row; "group": one per row per G columns in the ORIGINAL column order (the static
    groups GPTQ uses with act-order, so that groups stay contiguous and ``g_idx`` stays ``i // G``).
    """
    W = Wt.t()
    if spec.granularity == "tensor":
        scales, zeros = [], []
        for seg in W.split(row_splits):
            s, z = compute_qparams(seg, spec)
            scales.append(s.expand(len(seg), 1))
            zeros.append(z.expand(len(seg), 1))
        return torch.cat(scales), torch.cat(zeros)
    scale, zero = compute_qparams(W, spec)
    return scale.reshape(W.shape[0], -1), zero.reshape(W.shape[0], -1)


@torch.no_grad()
def gptq_quantize(
    W: Tensor,
    H: Tensor,
    spec: QuantSpec,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    row_splits: list[int] | None = None,
    inverse_dtypes: tuple[torch.dtype, ...] | None = None,
) -> GPTQResult:
    """GPTQ-quantize ``W`` ``[out, in]`` given the Hessian ``H = (2/n) XXᵀ`` ``[in, in]`` of its inputs.

    Group parameters are computed when the column loop reaches a group's first column, as the authors'
    ``fasterquant`` does: from the weights with the errors of the previous blocks of ``block_size`` columns
    spread (the lazy batch update), not yet those of the current block; with ``act_order`` they are the static
    groups of :func:`_fixed_params`. ``row_splits`` gives the row
    counts of layers stacked into ``W`` (used by per-tensor scales; default: one layer). ``inverse_dtypes``:
    the dtypes the inverse Hessian is tried in (default :data:`INVERSE_DTYPES`).
    """
    require(spec.granularity != "token", "GPTQ quantizes weights: granularity 'token' is for activations")
    require(
        H.shape == (W.shape[1], W.shape[1]), f"Hessian shape {tuple(H.shape)} does not match weight {tuple(W.shape)}"
    )
    require(bool(torch.isfinite(W).all()), "GPTQ: the weight holds NaN or Inf")
    require(bool(torch.isfinite(H).all()), "GPTQ: the Hessian holds NaN or Inf (non-finite calibration activations)")
    row_splits = row_splits or [W.shape[0]]
    require(sum(row_splits) == W.shape[0], f"row_splits {row_splits} do not add up to {W.shape[0]} rows")
    Wt = W.detach().t().to(torch.float32, memory_format=torch.contiguous_format, copy=True)  # [in, out], a copy
    H = H.detach().to(torch.float32)
    n_in = Wt.shape[0]
    grouped_cols = spec.granularity == "group"
    G = spec.G if grouped_cols else n_in

    dead = torch.diagonal(H) == 0  # inputs that are always zero: the weight is irrelevant, set it to 0
    if bool(dead.any()):
        H = H.clone()  # the caller's H is left as it was
        H[dead, dead] = 1
    Wt[dead] = 0
    fixed = not grouped_cols or act_order
    if fixed:
        scale_all, zero_all = _fixed_params(Wt, spec, row_splits)
    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else torch.arange(n_in, device=Wt.device)
    if act_order:
        Wt, H = Wt[perm], H[perm][:, perm]
    U, damp = hessian_inverse_cholesky(H, damp, inverse_dtypes)
    del H
    U = U.to(torch.float32)

    per_row = QuantSpec(spec.bits, spec.symmetric, "channel", grid=spec.grid)  # parameters of a [out, k] slice
    Ct = torch.zeros_like(Wt)
    scales, zeros = [], []
    loss = torch.zeros((), dtype=torch.float64, device=Wt.device)
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        W1 = Wt[i1:i2].clone()  # this block, kept up to date with every error inside it
        E1 = torch.zeros_like(W1)  # scaled errors (w - q) / U_jj of its columns
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if fixed:
                g = int(perm[j]) // G if grouped_cols else 0
                scale, zero = scale_all[:, g], zero_all[:, g]
            elif j % G == 0:
                # parameters of the group [j, j+G) as the authors' fasterquant takes them: from the weights
                # with the lazy updates of the blocks before this one (not yet this block's own errors)
                scale, zero = compute_qparams(Wt[j : j + G].t(), per_row)
                scale, zero = scale.flatten(), zero.flatten()
                scales.append(scale)
                zeros.append(zero)
            w = W1[i]
            c = grid_codes(w, scale, zero, spec)
            Ct[j] = c
            torch.div(w - (c - zero) * scale, U1[i, i], out=E1[i])
            W1[i:].addr_(U1[i, i:], E1[i], alpha=-1)  # eq. 3: spread the error over the rest of the block
        Wt[i2:] -= U[i1:i2, i2:].t() @ E1  # lazy batch update of all later columns
        loss += (E1.to(torch.float64) ** 2).sum() / 2

    if not fixed:
        scale_all, zero_all = torch.stack(scales, dim=1), torch.stack(zeros, dim=1)
    codes = Ct[torch.argsort(perm)].t().contiguous()
    qweight = QuantizedWeight(
        codes=codes.to(torch.int8 if spec.symmetric else torch.uint8),
        scale=scale_all.contiguous(),
        zero=zero_all.contiguous(),
        g_idx=default_g_idx(n_in, spec, Wt.device),
        spec=spec,
    )
    return GPTQResult(qweight=qweight, loss=float(loss), damp=damp)


def split_rows(qw: QuantizedWeight, row_splits: list[int]) -> list[QuantizedWeight]:
    """The quantized weights of layers that were stacked by rows into ``qw``."""
    out, start = [], 0
    for n in row_splits:
        rows = slice(start, start + n)
        out.append(
            QuantizedWeight(
                qw.codes[rows].contiguous(),
                qw.scale[rows].contiguous(),
                qw.zero[rows].contiguous(),
                qw.g_idx,
                qw.spec,
                qw.layout,
                {k: v[rows].contiguous() for k, v in qw.extras.items()},
            )
        )
        start += n
    return out
