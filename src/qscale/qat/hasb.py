"""HASB and the mixed-precision sub-network search of Double Rounding ("Nearly Lossless Adaptive Bit Switching",
Huang et al. 2025, arXiv 2502.01199, submission text with appendix; the stored copy of the authors' repository
haiduo/Double-Rounding holds no code, so this follows the paper).

- **Hessian traces**: Hutchinson's ``tr(∇²_W L) ≈ mean_v vᵀ(∇²_W L)v`` (Rademacher ``v``) of each quantized
  layer's weight on the full-precision model (the paper's ``cal_hessian.py`` step).
- **HASB, Algorithm 1** (Hessian-aware stochastic bit switching, one-shot mixed-precision training): a layer whose
  trace is below the mean of all layers' traces samples its width uniformly from the candidate set ``B``; every
  other (sensitive) layer samples width ``b`` with probability ``p(b) = b/‖B‖₁`` (wider widths more often).
- **Algorithm 2** (sub-network search, an integer linear program): one width per layer minimising the
  Hessian-weighted quantization perturbation ``Σ_i tr(H_i)·‖Ŵ_i(b_i) − W_i‖²`` under a budget on the weight bits
  ``Σ_i n_i·b_i ≤ budget`` (``n_i`` the layer's weight count), solved exactly with ``scipy.optimize.milp``
  (binary ``x_{i,b}``, one width per layer). Reading: the objective is HAWQ-V3's ``Ω_i = tr(H_i)·‖Q(W_i) − W_i‖²``
  (the sensitivity the paper's Hessian traces feed), the constraint a model-size budget; a negative trace
  estimate (possible away from a minimum) counts as 0 (an insensitive layer).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from rich.progress import Progress
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from qscale.errors import require
from qscale.qat.doublerounding import _quantizers, set_bits
from qscale.train.engine import OptimConfig, lm_loss, train_steps


def hessian_traces(loss_fn: Callable[[], Tensor], params: dict[str, Tensor], samples: int = 8,
                   seed: int = 0) -> dict[str, float]:
    """Hutchinson's ``tr(∇²_w L) ≈ mean_v vᵀ(∇²_w L)v`` (Rademacher ``v``) of each parameter's diagonal block."""
    gen = torch.Generator().manual_seed(seed)
    sums = dict.fromkeys(params, 0.0)
    names, tensors = list(params), list(params.values())
    for _ in range(samples):
        with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no second derivative
            grads = torch.autograd.grad(loss_fn(), tensors, create_graph=True)
        vs = [(torch.randint(0, 2, t.shape, generator=gen) * 2 - 1).to(t) for t in tensors]
        hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs)
        for n, v, hv in zip(names, vs, hvs):
            sums[n] += float((v * hv).sum())
    return {n: s / samples for n, s in sums.items()}


def hasb_probabilities(traces: dict[str, float], bits: tuple[int, ...]) -> dict[str, Tensor]:
    """Algorithm 1: each layer's distribution over the ascending ``bits`` (uniform below the mean trace, else
    ``b/‖B‖₁``)."""
    widths = sorted(bits)
    require(len(widths) >= 2 and all(b > 0 for b in widths), "HASB needs at least 2 positive widths")
    require(traces and all(np.isfinite(t) for t in traces.values()), "HASB needs finite Hessian traces")
    mean = sum(traces.values()) / len(traces)
    uniform = torch.full((len(widths),), 1 / len(widths), dtype=torch.float64)
    proportional = torch.tensor(widths, dtype=torch.float64) / sum(widths)
    return {n: uniform.clone() if t < mean else proportional.clone() for n, t in traces.items()}


def sample_bits(probs: dict[str, Tensor], bits: tuple[int, ...], gen: torch.Generator) -> dict[str, int]:
    """One draw of every layer's width from its HASB distribution."""
    widths = sorted(bits)
    return {n: widths[int(torch.multinomial(p, 1, generator=gen))] for n, p in probs.items()}


def hasb_finetune(model: nn.Module, batches: Callable[[int], Tensor], steps: int, lr: float,
                  probs: dict[str, Tensor], bits: tuple[int, ...] = (8, 6, 4, 2), seed: int = 0,
                  grad_clip: float = 1.0, progress: bool = False) -> list[float]:
    """One-shot mixed-precision training: each step every layer runs at a width drawn by HASB (Algorithm 1).

    One AdamW step per step on weights and scales (qscale's engine); ALRS does not apply, since a step trains
    each layer's scales at one precision only."""
    _quantizers(model)
    gen = torch.Generator().manual_seed(seed)

    def hasb_loss(forward: nn.Module, batch: Tensor, step: int) -> Tensor:
        set_bits(model, sample_bits(probs, bits, gen))
        return lm_loss(forward, batch)[0]

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("HASB", total=steps)
        losses = train_steps(model, batches, OptimConfig(lr=lr, grad_clip=grad_clip), steps, loss_fn=hasb_loss,
                             on_step=lambda done, loss, lr_now: bar.update(task, completed=done))
    set_bits(model, max(_quantizers(model)[n].spec.bits for n in probs))
    return losses


@torch.no_grad()
def perturbations(model: nn.Module, bits: tuple[int, ...]) -> dict[str, dict[int, float]]:
    """``‖Ŵ_i(b) − W_i‖²`` of every double-rounding layer at every width (its own trained scales)."""
    out = {}
    for name, q in _quantizers(model).items():
        w = model.get_submodule(name).weight
        keep, out[name] = q.bits, {}
        for b in bits:
            q.bits = b
            out[name][b] = float(((q(w) - w) ** 2).sum())
        q.bits = keep
    return out


def search_subnet(traces: dict[str, float], perturb: dict[str, dict[int, float]], sizes: dict[str, int],
                  budget_bits: float) -> dict[str, int]:
    """Algorithm 2: the width of each layer minimising ``Σ max(tr_i, 0)·perturb_i(b_i)`` with ``Σ n_i·b_i ≤
    budget_bits``, by an exact ILP (``scipy.optimize.milp``)."""
    names = list(traces)
    require(names and set(names) == set(perturb) == set(sizes), "traces, perturbations and sizes name other layers")
    widths = sorted(perturb[names[0]])
    require(all(sorted(perturb[n]) == widths for n in names), "every layer needs the same candidate widths")
    k = len(widths)
    cost = np.array([max(traces[n], 0.0) * perturb[n][b] for n in names for b in widths])
    size = np.array([sizes[n] * b for n in names for b in widths], dtype=float)
    require(budget_bits >= sum(sizes[n] * widths[0] for n in names),
            f"no sub-network fits {budget_bits:g} weight bits (the narrowest needs "
            f"{sum(sizes[n] * widths[0] for n in names)})")
    one = np.kron(np.eye(len(names)), np.ones(k))  # one width per layer
    res = milp(cost, integrality=np.ones_like(cost), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(one, 1, 1), LinearConstraint(size[None, :], -np.inf, budget_bits)])
    require(res.status == 0 and res.x is not None, f"the sub-network ILP found no solution: {res.message}")
    x = np.round(res.x).reshape(len(names), k)
    return {n: widths[int(np.argmax(x[i]))] for i, n in enumerate(names)}
