"""GPTQ for one linear layer (Frantar et al. 2022, arXiv 2210.17323, Algorithm 1; SPEC §6).

Minimises ``||XWᵀ - XQᵀ||²`` column by column: quantize column j, spread its error over the
not-yet-quantized columns with the inverse Hessian (eq. 3, using rows of the upper Cholesky factor
of ``H⁻¹``), in blocks of ``block_size`` columns with a lazy batch update of later columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qscale.errors import QscaleError, require
from qscale.quant import QuantSpec, compute_qparams, grid_codes, round_to_grid


@dataclass
class GPTQResult:
    """Quantized layer: ``weight`` = dequantized ``[out, in]`` (original column order).

    ``codes`` ``[out, in]`` (int8 sym / uint8 asym), ``scale``/``zero`` ``[out, n_groups]`` and
    ``g_idx`` ``[in]`` = the group of each input column, so ``weight[:, i] ==
    (codes[:, i] - zero[:, g_idx[i]]) * scale[:, g_idx[i]]`` (GPTQ checkpoint convention; with act-order
    the groups are runs of G columns in the permuted order, hence not contiguous). ``loss`` is
    GPTQ's own objective ``Σ (w - q)² / (2 U_jj²)``; ``damp`` the relative dampening finally used.
    """

    weight: Tensor
    codes: Tensor
    scale: Tensor
    zero: Tensor
    g_idx: Tensor
    loss: float
    damp: float


def hessian_inverse_cholesky(H: Tensor, damp: float) -> tuple[Tensor, float]:
    """Upper Cholesky factor U of ``(H + λI)⁻¹``, ``λ = damp·mean(diag H)`` (float64).

    If a factorisation fails, ``damp`` is multiplied by 10 and tried again, up to ``damp = 1``.
    """
    H = H.to(torch.float64)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    mean_diag = torch.diagonal(H).mean()
    while damp <= 1:
        L, info = torch.linalg.cholesky_ex(H + damp * mean_diag * eye)
        if info == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if info == 0:
                return U, damp
        damp *= 10
    raise QscaleError(f"GPTQ: Hessian is not positive definite even with dampening {damp / 10:g}")


@torch.no_grad()
def gptq_quantize(
    W: Tensor, H: Tensor, spec: QuantSpec, block_size: int = 128, damp: float = 0.01, act_order: bool = False
) -> GPTQResult:
    """GPTQ-quantize ``W`` ``[out, in]`` given the Hessian ``H = (2/n) XXᵀ`` ``[in, in]`` of its inputs."""
    require(spec.granularity != "token", "GPTQ quantizes weights: granularity 'token' is for activations")
    require(H.shape == (W.shape[1], W.shape[1]), f"Hessian shape {tuple(H.shape)} does not match weight {tuple(W.shape)}")
    Wt = W.detach().to(torch.float32).t().contiguous()  # [in, out]: weight column j is row j (contiguous)
    H = H.detach().to(torch.float32).clone()
    n_in = Wt.shape[0]
    G = spec.group_size if spec.granularity == "group" else n_in

    dead = torch.diagonal(H) == 0  # inputs that are always zero: the weight is irrelevant, set it to 0
    H[dead, dead] = 1
    Wt[dead] = 0
    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else torch.arange(n_in, device=Wt.device)
    Wt, H = Wt[perm], H[perm][:, perm]
    U, damp = hessian_inverse_cholesky(H, damp)
    U = U.to(torch.float32)

    per_row = QuantSpec(spec.bits, spec.symmetric, "channel")  # parameters of a [out, k] slice, per row
    if spec.granularity in ("tensor", "channel"):  # one set of parameters, from the whole matrix
        scale, zero = compute_qparams(Wt.t(), spec)
        scale, zero = scale.flatten(), zero.flatten()
    Qt = torch.zeros_like(Wt)
    scales, zeros = [], []
    loss = torch.zeros((), dtype=torch.float64, device=Wt.device)
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        W1 = Wt[i1:i2].clone()  # this block, kept up to date with every error inside it
        E1 = torch.zeros_like(W1)  # scaled errors (w - q) / U_jj of its columns
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if spec.granularity == "group" and j % G == 0:
                # parameters of the group [j, j+G) from its current (error-updated) weights; columns
                # past this block still lack the pending lazy update from this block: apply it here
                group = W1[i : min(j + G, i2) - i1]
                if j + G > i2:
                    rest = Wt[i2 : j + G] - U[i1:j, i2 : j + G].t() @ E1[:i]
                    group = torch.cat([group, rest])
                scale, zero = compute_qparams(group.t(), per_row)
                scale, zero = scale.flatten(), zero.flatten()
                scales.append(scale)
                zeros.append(zero)
            w = W1[i]
            q = round_to_grid(w, scale, zero, spec)
            Qt[j] = q
            torch.div(w - q, U1[i, i], out=E1[i])
            W1[i:].addr_(U1[i, i:], E1[i], alpha=-1)  # eq. 3: spread the error over the rest of the block
        Wt[i2:] -= U[i1:i2, i2:].t() @ E1  # lazy batch update of all later columns
        loss += (E1.to(torch.float64) ** 2).sum() / 2

    if spec.granularity == "group":
        scale, zero = torch.stack(scales, dim=1), torch.stack(zeros, dim=1)
        group_of = torch.arange(n_in, device=Wt.device) // G  # group of each permuted column
    else:
        scale, zero = scale.reshape(-1, 1), zero.reshape(-1, 1)
        group_of = torch.zeros(n_in, dtype=torch.long, device=Wt.device)
    inv = torch.argsort(perm)
    Q, g_idx = Qt[inv].t().contiguous(), group_of[inv]
    codes = grid_codes(Q, scale[:, g_idx], zero[:, g_idx], spec)
    return GPTQResult(
        weight=Q,
        codes=codes.to(torch.int8 if spec.symmetric else torch.uint8),
        scale=scale,
        zero=zero,
        g_idx=g_idx.to(torch.int32),
        loss=float(loss),
        damp=damp,
    )
