"""``qvgen``: QVGen auxiliary modules with rank decay (Huang et al. 2025, arXiv 2505.11497; SPEC §6).

Quantizers: LSQ's (``qscale.qat.lsq``). Beside each quantized weight a low-rank auxiliary branch
``Φ = U·diag(γ)·V`` (``U`` ``[out, r]``, ``V`` ``[r, in]``, trainable) is added during QAT:
``y = x·(Q(W) + Φ)ᵀ`` — QVGen's ``Q(W)x + Φx`` — which absorbs part of the quantization error and lowers the
gradient norm early in training. ``Φ`` starts as the best rank-r approximation of the quantization error
``W − Q(W)`` (truncated SVD). Rank decay: the first ``decay_end`` fraction of the steps is split into phases
that halve the rank (r → r/2 → … → 1 → 0). At the start of a phase ``Φ`` is re-factored by SVD in place
(``U = U_s·√S``, ``V = √S·V_s``; the optimizer state of ``U``/``V`` is kept, as the authors' code does) and the
rank-based regulariser ``γ`` of the components beyond the phase's target rank (the smallest singular values)
anneals from 1 to 0 by a cosine over the phase; at its end they are dropped (``γ = 0``). After ``decay_end`` (at
the latest after the last step) the branch has rank 0, so the model trains and freezes as plain LSQ: ``convert``
refuses a branch of nonzero rank, and the export has no extra tensor. ``γ`` is a buffer (part of the resumable
state); the schedule is a function of the step.

The schedule, the re-factoring and the branch agree step by step with the authors' ``ProgressiveLoRAQuantizer``
(ModelTC/QVGen, ``training/quant/quant.py``; tests/qat/test_qvgen.py), whose phases last ``progress_alpha_T`` steps
(here ``decay_end·steps`` split evenly). Deliberate difference: the authors quantize weights with LSQ+ (asymmetric
per channel, learned zero point, MSE-searched init) and learn activation clipping; qscale's qvgen adds QVGen's
branch and rank decay to qscale's LSQ recipe, so that comparing it with ``lsq`` measures the branch alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qscale.errors import require
from qscale.qat.hooks import TrainHooks
from qscale.qat.lsq import LSQRecipe, LSQWeightQuantizer
from qscale.qat.prepare import quant_layers
from qscale.qat.registry import register
from qscale.qat.ste import weight_spec
from qscale.quant import QuantizedWeight


@dataclass(frozen=True)
class QVGenOptions:
    """decay_end: fraction of the steps by which every branch reaches rank 0 (the rank is ``cfg.rank``)."""

    decay_end: float = 0.75

    def __post_init__(self) -> None:
        require(0 < self.decay_end <= 1, f"qvgen decay_end must be in (0, 1], got {self.decay_end}")


def rank_phases(rank: int) -> list[int]:
    """Target ranks of the phases: halving from ``rank`` to 1, then 0 (e.g. 8 → [4, 2, 1, 0])."""
    out, r = [], rank
    while r > 0:
        r //= 2
        out.append(r)
    return out


def phase_at(step: int, steps: int, rank: int, decay_end: float) -> tuple[int, float]:
    """(phase index, progress in [0, 1) within it) of ``step``; phase ``len(rank_phases)`` = decay done."""
    n = len(rank_phases(rank))
    end = min(steps, max(n, math.floor(decay_end * steps)))  # one step per phase if there are enough steps
    if step >= end:
        return n, 0.0
    pos = step * n / end
    return int(pos), pos - int(pos)


class QVGenWeightQuantizer(LSQWeightQuantizer):
    """LSQ weight fake quantization plus the auxiliary branch ``U·diag(γ)·V``."""

    def __init__(self, weight: Tensor, spec, rank: int):
        super().__init__(weight, spec)
        rank = min(rank, *weight.shape)
        with torch.no_grad():
            err = weight.detach().float() - super().forward(weight.detach()).float()
            U, S, Vh = torch.linalg.svd(err, full_matrices=False)
            root = S[:rank].sqrt()
        self.U = nn.Parameter((U[:, :rank] * root).to(weight.dtype))
        self.V = nn.Parameter((root[:, None] * Vh[:rank]).to(weight.dtype))
        self.register_buffer("gamma", torch.ones(rank, dtype=weight.dtype))

    @property
    def rank(self) -> int:
        """Number of live components (``γ > 0``)."""
        return int((self.gamma > 0).sum())

    def branch(self) -> Tensor:
        return (self.U * self.gamma) @ self.V

    def forward(self, w: Tensor) -> Tensor:
        out = super().forward(w)
        return out + self.branch().to(out.dtype) if self.rank else out

    @torch.no_grad()
    def refactor(self, keep: int) -> None:
        """SVD of the live branch; components are ordered by singular value, γ = 1 on all of them."""
        U, S, Vh = torch.linalg.svd(self.branch().float(), full_matrices=False)
        r = self.gamma.numel()
        root = S[:r].sqrt()
        self.U.copy_(U[:, :r] * root)
        self.V.copy_(root[:, None] * Vh[:r])
        self.gamma.zero_()
        self.gamma[:keep] = 1.0

    def freeze(self, w: Tensor) -> QuantizedWeight:
        require(
            self.rank == 0,
            f"a QVGen branch still has rank {self.rank}: train to the end of the rank-decay schedule before converting",
        )
        return super().freeze(w)


class QVGenHooks(TrainHooks):
    """Rank decay after every optimizer step."""

    def __init__(self, model: nn.Module, rank: int, opts: QVGenOptions):
        self.quantizers = [
            m.weight_quantizer
            for m in quant_layers(model).values()
            if isinstance(m.weight_quantizer, QVGenWeightQuantizer)
        ]
        self.rank, self.opts = rank, opts
        self.targets = rank_phases(rank)

    def after_step(self, model, opt, step, steps):
        phase, t = phase_at(step + 1, steps, self.rank, self.opts.decay_end)
        prev, _ = phase_at(step, steps, self.rank, self.opts.decay_end)
        n = len(self.targets)
        live = self.rank if phase == 0 else self.targets[phase - 1]  # components alive in ``phase``
        for q in self.quantizers:
            if phase != prev:  # the phases before are over: drop their decayed components, re-factor the rest
                q.gamma[live:] = 0.0
                if phase < n and q.rank:
                    q.refactor(q.rank)
            if phase < n:
                q.gamma[self.targets[phase] : live] = 0.5 * (1 + math.cos(math.pi * t))


@register
class QVGenRecipe(LSQRecipe):
    name = "qvgen"
    options_type = QVGenOptions

    def weight_quantizer(self, weight, bits, cfg):
        return QVGenWeightQuantizer(weight, weight_spec(bits, cfg.group_size, grid="full"), cfg.rank)

    def hooks(self, model, cfg, teacher):
        return QVGenHooks(model, cfg.rank, cfg.options)
