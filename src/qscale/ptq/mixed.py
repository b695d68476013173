"""Importance-based mixed precision: bits per layer under an average-bit budget, from per-layer sensitivity.

The seed paper, "Gradient-Based Post-Training Quantization: Challenging the Status Quo" (Yvinec, Dapogny,
Bailly 2023, arXiv 2308.07662), allocates bit widths per layer by importance ("we propose a novel
importance-based mixed-precision technique"). Its full text was not reachable from this project's sources
(only the abstract), so its exact importance formula is not reproduced; the score used is the standard
second-order (diagonal empirical Fisher, OBD) estimate of the loss increase caused by quantizing layer ``l``
alone at ``b`` bits, ``S_l(b) = ½ Σ_i F_ii · (w_i − Q_b(w_i))²``, with the empirical Fisher
``F_ii = (1/N) Σ_n (∂L_n/∂w_i)²`` a mean over the N calibration windows of each window's own squared gradient
(the square of a batch-mean gradient is not a Fisher estimate: per-sample gradients that disagree cancel
in the mean), and ``Q_b`` round-to-nearest on the scale ``learned-round`` starts from (BRECQ's MSE range,
``qscale.ptq.clip``). Allocation: every layer starts at the lowest width; the upgrade with the largest
``ΔS / Δbits·n_l`` (loss saved per weight bit spent) that still fits the budget ``avg_bits · Σ n_l`` is taken
until none fits (the greedy solution of the knapsack). The budget counts weight codes only (scales are extra,
as for any ``wNgG`` label).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from qscale.errors import require
from qscale.ptq.clip import mse_qparams
from qscale.ptq.layers import weight_param
from qscale.quant import QuantSpec, grid_codes, grouped, ungrouped

MIX_BITS = (2, 3, 4, 5, 6, 7, 8)


def fisher_diagonal(model: nn.Module, layers: dict[str, nn.Module], calib: Tensor) -> dict[str, Tensor]:
    """Empirical Fisher diagonal ``(1/N) Σ_n g_n²`` of each layer's weight (``[out, in]``), ``g_n`` the gradient of
    the next-token loss of calibration window ``n`` of ``calib [N, T]`` alone (one backward pass per window)."""
    require(calib.shape[1] >= 2, "mixed precision needs calibration windows of at least 2 tokens")
    weights = {n: weight_param(m) for n, m in layers.items()}
    was = {n: w.requires_grad for n, w in weights.items()}
    fisher = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
    device = next(model.parameters()).device
    try:
        for w in weights.values():
            w.requires_grad_(True)
        for ids in calib.split(1):
            ids = ids.to(device)
            logits = model(input_ids=ids[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
            grads = torch.autograd.grad(loss, list(weights.values()))
            for n, g in zip(layers, grads, strict=True):
                fisher[n] += g.float() ** 2 / calib.shape[0]
    finally:
        for n, w in weights.items():
            w.requires_grad_(was[n])
    return {n: f.t() if isinstance(layers[n], Conv1D) else f for n, f in fisher.items()}


def sensitivities(
    weights: dict[str, Tensor], fisher: dict[str, Tensor], spec: QuantSpec, choices: tuple[int, ...] = MIX_BITS
) -> dict[str, dict[int, float]]:
    """``S_l(b) = ½ Σ F ⊙ (W − Q_b(W))²`` for every layer and candidate width."""
    out = {}
    for name, w in weights.items():
        w = w.float()
        out[name] = {
            b: float(0.5 * (fisher[name] * (w - rtn_mse(w, dataclasses.replace(spec, bits=b))) ** 2).sum())
            for b in choices
        }
    return out


def rtn_mse(w: Tensor, spec: QuantSpec) -> Tensor:
    """Round-to-nearest of ``w`` on the MSE-searched scale (``qscale.ptq.clip``), dequantized."""
    s, z = mse_qparams(w, spec)
    return ungrouped((grid_codes(grouped(w, spec), s, z, spec) - z) * s, spec, w.shape)


def allocate_bits(sens: dict[str, dict[int, float]], sizes: dict[str, int], avg_bits: float) -> dict[str, int]:
    """Bits per layer with ``Σ n_l b_l <= avg_bits · Σ n_l``, greedily by loss saved per bit spent."""
    choices = sorted(next(iter(sens.values())))
    require(choices[0] <= avg_bits <= choices[-1], f"avg_bits must be in {choices[0]}..{choices[-1]}, got {avg_bits}")
    bits = dict.fromkeys(sens, choices[0])
    left = avg_bits * sum(sizes.values()) - choices[0] * sum(sizes.values())
    while True:
        best = None
        for name, b in bits.items():
            if b == choices[-1]:
                continue
            nb = choices[choices.index(b) + 1]
            cost = (nb - b) * sizes[name]
            if cost > left + 1e-9:
                continue
            ratio = (sens[name][b] - sens[name][nb]) / cost
            if best is None or ratio > best[0]:
                best = (ratio, name, nb, cost)
        if best is None:
            return bits
        _, name, nb, cost = best
        bits[name] = nb
        left -= cost
