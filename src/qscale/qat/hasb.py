"""HASB and the mixed-precision sub-network search of Double Rounding ("Nearly Lossless Adaptive Bit Switching",
Huang et al. 2025, arXiv 2502.01199, submission text with appendix; the stored copy of the authors' repository
haiduo/Double-Rounding holds no code, so this follows the paper).

- **Hessian traces**: Hutchinson's ``tr(∇²_W L) ≈ mean_v vᵀ(∇²_W L)v`` (Rademacher ``v``) of each quantized
  layer's weight on the full-precision model (the paper's ``cal_hessian.py`` step).
- **HASB, Algorithm 1** (Hessian-aware stochastic bit switching, one-shot mixed-precision training): a layer whose
  trace is below the mean of all layers' traces samples its width uniformly from the candidate set ``B``; every
  other (sensitive) layer samples width ``b`` with probability ``p(b) = b/‖B‖₁`` (wider widths more often);
  the SuperNet training around it is Algorithm A.3 (:func:`hasb_finetune`).
- **Algorithm 2** (sub-network search, an integer linear program solved exactly with ``scipy.optimize.milp``; the
  paper uses PuLP): one width ``b_l ∈ B`` per layer with the average width ``(1/L)·Σ_l b_l = ω`` and the objective
  ``O = Σ_l (t_l/n_l)·b_l`` (``t_l`` the layer's Hessian trace, ``n_l`` its parameter count); then, for every
  layer ``i`` and every width ``b`` below the first solution's widest that differs from ``i``'s width there, the
  program again with ``b_i = b`` forced, each new solution added (lines 5–16). Reading: the paper prints
  "Minimal objective"; minimised, ``O`` would give the most sensitive layers the fewest bits, against its own
  premise (Algorithm 1: sensitive layers prefer higher widths), so ``O`` is maximised. Ties between equally good
  solutions are broken by the solver.
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


def hessian_traces(
    loss_fn: Callable[[], Tensor], params: dict[str, Tensor], samples: int = 8, seed: int = 0
) -> dict[str, float]:
    """Hutchinson's ``tr(∇²_w L) ≈ mean_v vᵀ(∇²_w L)v`` (Rademacher ``v``) of each parameter's diagonal block."""
    gen = torch.Generator().manual_seed(seed)
    sums = dict.fromkeys(params, 0.0)
    names, tensors = list(params), list(params.values())
    for _ in range(samples):
        with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no second derivative
            grads = torch.autograd.grad(loss_fn(), tensors, create_graph=True)
        vs = [(torch.randint(0, 2, t.shape, generator=gen) * 2 - 1).to(t) for t in tensors]
        hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs)
        for n, v, hv in zip(names, vs, hvs, strict=True):
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


def sample_bits(
    probs: dict[str, Tensor], bits: tuple[int, ...], gen: torch.Generator, base: int | None = None, sigma: float = 1.0
) -> dict[str, int]:
    """Every layer's width: with probability ``sigma`` a draw from its HASB distribution (Algorithm 1's
    roulette), else ``base`` (Algorithm A.3, lines 8–11)."""
    widths = sorted(bits)
    out = {}
    for n, p in probs.items():
        spin = base is None or float(torch.rand((), generator=gen)) < sigma
        out[n] = widths[int(torch.multinomial(p, 1, generator=gen))] if spin else base
    return out


def hasb_finetune(
    model: nn.Module,
    batches: Callable[[int], Tensor],
    steps: int,
    lr: float,
    probs: dict[str, Tensor],
    bits: tuple[int, ...] = (8, 6, 4, 2),
    sigma: float = 1.0,
    seed: int = 0,
    grad_clip: float = 1.0,
    progress: bool = False,
) -> list[float]:
    """One-shot mixed-precision SuperNet training (Algorithm A.3) for ``steps`` iterations; the loss of each pass.

    Each iteration runs one pass per width ``b`` of ``bits`` on the same batch; in a pass every layer runs at a
    HASB draw (Algorithm 1) with probability ``σ_t = sigma·(t + 1)/steps`` (the paper's threshold, grown with
    training: "σ = σ × (epoch + 1)/total_epochs", per iteration here) and at ``b`` otherwise; each pass is one
    AdamW step of weights and scales (qscale's engine). The paper gives no value of ``σ``; 1 by default."""
    _quantizers(model)
    require(0 < sigma <= 1, f"HASB sigma must be in (0, 1], got {sigma}")
    gen = torch.Generator().manual_seed(seed)
    per = len(bits)

    def hasb_loss(forward: nn.Module, batch: Tensor, step: int) -> Tensor:
        it = step // per
        set_bits(model, sample_bits(probs, bits, gen, base=bits[step % per], sigma=sigma * (it + 1) / steps))
        return lm_loss(forward, batch)[0]

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("HASB", total=steps)
        losses = train_steps(
            model,
            lambda k: batches(k // per),
            OptimConfig(lr=lr, grad_clip=grad_clip),
            steps * per,
            loss_fn=hasb_loss,
            on_step=lambda done, loss, lr_now: bar.update(task, completed=done // per),
        )
    set_bits(model, max(_quantizers(model)[n].spec.bits for n in probs))
    return losses


def _solve(weights: np.ndarray, widths: list[int], total: float, fixed: tuple[int, int] | None) -> np.ndarray | None:
    """Maximise ``Σ_l weights_l·b_l`` with ``Σ_l b_l = total``; ``fixed = (layer, width index)`` forces one width."""
    n, k = len(weights), len(widths)
    gain = -np.kron(weights, np.array(widths, dtype=float))  # milp minimises
    lower = np.zeros(n * k)
    if fixed is not None:
        lower[fixed[0] * k + fixed[1]] = 1
    one = np.kron(np.eye(n), np.ones(k))  # one width per layer
    size = np.tile(np.array(widths, dtype=float), n)
    res = milp(
        gain,
        integrality=np.ones(n * k),
        bounds=Bounds(lower, 1),
        constraints=[LinearConstraint(one, 1, 1), LinearConstraint(size[None, :], total, total)],
    )
    if res.status != 0 or res.x is None:
        return None
    return np.array(widths)[np.argmax(np.round(res.x).reshape(n, k), axis=1)]


def search_subnets(
    traces: dict[str, float], sizes: dict[str, int], bits: tuple[int, ...], avg_bits: float
) -> list[dict[str, int]]:
    """Algorithm 2: the sub-networks (one width per layer) of average width ``avg_bits``, the first the ILP
    optimum of ``Σ_l (t_l/n_l)·b_l``, then the optima with one layer forced to another, narrower width."""
    names = list(traces)
    require(names and set(names) == set(sizes), "traces and sizes must name the same layers")
    require(
        all(np.isfinite(t) for t in traces.values()) and all(sizes[n] > 0 for n in names),
        "Algorithm 2 needs finite Hessian traces and positive layer sizes",
    )
    widths = sorted(bits)
    weights = np.array([traces[n] / sizes[n] for n in names])
    total = avg_bits * len(names)
    first = _solve(weights, widths, total, None)
    require(first is not None, f"no sub-network has an average width of {avg_bits:g} bits with widths {widths}")
    found = [first]
    for i, chosen in enumerate(first):
        for j, b in enumerate(widths):
            if b >= first.max() or b == chosen:
                continue
            sol = _solve(weights, widths, total, (i, j))
            if sol is not None and not any(np.array_equal(sol, f) for f in found):
                found.append(sol)
    return [{n: int(b) for n, b in zip(names, sol, strict=True)} for sol in found]
