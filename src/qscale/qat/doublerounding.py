"""``double-rounding``: one-shot joint QAT of several weight precisions stored as one integer model
("Nearly Lossless Adaptive Bit Switching", Huang et al. 2025, arXiv 2502.01199, read in its submission text with
appendix (OpenReview sYGNCscE9M); the stored copy of the authors' repository haiduo/Double-Rounding holds no code,
so everything here follows the paper's equations and algorithms). Weight-only: the paper's separately learned
activation scales per precision have no counterpart here (activations stay unquantized).

Quantizer (Double Rounding): one learned step ``s`` per group at the highest precision ``h`` (symmetric full
grid, initialised to RTN's ``2·absmax/(2^h − 1)``); ``q_h = clamp(⌊W/s⌉, −2^(h−1), 2^(h−1) − 1)`` and each lower
precision ``b`` rounds the integers again, ``q_b = clamp(⌊q_h/2^(h−b)⌉, −2^(b−1), 2^(b−1) − 1)``,
``Ŵ_b = q_b · s·2^(h−b)`` — exactly what ``qscale.quant.switch.switch_bits`` derives from the stored ``q_h``, so the
converted model (``h``-bit codes, no float weights) serves every trained precision through
``load_quantized(path, bits=b)``. Rounding is straight-through, so ``∂Ŵ/∂s`` is LSQ's (``q − W/s`` inside,
the clamped code outside).

- **Joint training with ALRS** (:func:`joint_finetune`, the paper's Algorithm A.2): for each precision ``b`` in
  turn, the LM loss at ``b``, its backward, then at once an AdamW step of the weights at the step's learning rate
  ``λ`` and a step of the scales (their own AdamW, weight decay 0: the paper's "dual optimizers") at
  ``λ_b = η_b·(λ − (1/L)·Σ_i min(max|clip(∇s_b^i, 1)|, 1))`` (Eq. 6; ``L`` quantized layers, ``clip`` to
  [−1, 1], ``max`` over the layer's scales) with ``η_b = 10^(−Δ/2)`` for even ``Δ = h − b`` and
  ``5·10^(−(Δ+1)/2)`` for odd ``Δ`` (Eq. 7: 1, 0.1, 0.01, 0.001 for 8/6/4/2 bits below ``h = 8``). Each
  precision is one step of qscale's engine (``len(bits)`` engine steps per iteration, same batch; schedule and
  clipping over those steps). Reading of Eq. 6: the paper says "suppose the current batch iteration's learning
  rate is λ", but at its own rate (Adam, 5e-4) and the scale gradients of its Figures 7–12 (1e-2–1e-1) the
  bracket is negative at every step, and it is here too (≈ 0.45 on the tiny test model against rates of
  1e-4–1e-3): read literally, every scale would take ascent steps (or, floored, never move). Implemented
  instead: ``λ`` is the base of a *scaling* of the learning rate, ``lr_b = lr · η_b·(λ − mean)`` with
  ``λ = alrs_lambda`` (1 by default; the paper cites LARS's trust ratio as its inspiration), which the
  ``min(·, 1)`` cap keeps non-negative for ``λ ≥ 1``; a negative value (``λ < 1``) is set to 0.
  ``ALRSHooks.rates`` records every rate. ``alrs=False`` is the paper's conventional Algorithm A.1: every
  precision's backward, then one AdamW step of weights and scales on the summed gradients.
- **HASB** (mixed precision, Algorithm 1) and the ILP search of a sub-network (Algorithm 2):
  ``qscale.qat.hasb``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from rich.progress import Progress
from torch import Tensor, nn

from qscale.errors import require
from qscale.qat.finetune import _resume, _save
from qscale.qat.hooks import TrainHooks
from qscale.qat.linear import QuantLinear, WeightQuantizer
from qscale.qat.registry import Recipe, register
from qscale.qat.ste import weight_spec
from qscale.quant import QTensor, QuantizedWeight, QuantSpec, compute_qparams, grouped, require_finite, ungrouped
from qscale.quant.ste import round_ste
from qscale.train.engine import OptimConfig, lm_loss, make_optimizer, train_steps


def alrs_eta(bits: int, high: int) -> float:
    """``η_b`` of Eq. 7: ``10^(−Δ/2)`` for even ``Δ = h − b``, ``5·10^(−(Δ+1)/2)`` for odd ``Δ``."""
    d = high - bits
    return 10.0 ** (-d / 2) if d % 2 == 0 else 5 * 10.0 ** (-(d + 1) / 2)


def alrs_rate(lr: float, bits: int, high: int, grads: list[Tensor], lam: float = 1.0) -> float:
    """Precision ``bits``'s learning rate: ``lr · λ_b`` with Eq. 6's ``λ_b = η_b·(λ − (1/L)·Σ_i
    min(max|clip(∇s_b^i, 1)|, 1))`` over the ``L`` layers' scale gradients ``grads``; 0 where ``λ_b < 0``."""
    require(len(grads) > 0, "ALRS needs the scale gradients of at least one layer")
    penalty = sum(min(float(g.clamp(-1, 1).abs().max()), 1.0) for g in grads) / len(grads)
    return lr * max(alrs_eta(bits, high) * (lam - penalty), 0.0)


class DoubleRoundingWeightQuantizer(WeightQuantizer):
    """Learned per-group step at the highest precision; ``bits`` selects the precision of the next forward."""

    def __init__(self, weight: Tensor, spec: QuantSpec):
        super().__init__()
        require(spec.symmetric and spec.bits >= 2, "double-rounding needs a symmetric grid of at least 2 bits")
        self.spec = spec
        s, _ = compute_qparams(weight.detach().float(), spec)
        self.scale = nn.Parameter(s.clamp_min(1e-8))
        self.bits = spec.bits

    def forward(self, w: Tensor) -> Tensor:
        require_finite(w, "a weight")
        h, b = self.spec.bits, self.bits
        require(2 <= b <= h, f"double-rounding switches {h}-bit codes to 2..{h} bits, not {b}")
        s = self.scale
        q = torch.clamp(round_ste(grouped(w, self.spec) / s), self.spec.qmin, self.spec.qmax)
        if b < h:
            q = torch.clamp(round_ste(q / 2 ** (h - b)), -(2 ** (b - 1)), 2 ** (b - 1) - 1)
        return ungrouped(q * (s * 2 ** (h - b)), self.spec, w.shape).to(w.dtype)

    @torch.no_grad()
    def freeze(self, w: Tensor) -> QuantizedWeight:
        """The ``h``-bit codes and steps (every lower precision is served from them by ``switch_bits``)."""
        s = self.scale.detach()
        codes = torch.clamp(torch.round(grouped(w.float(), self.spec) / s), self.spec.qmin, self.spec.qmax)
        codes = ungrouped(codes, self.spec, w.shape).to(torch.int8)
        return QuantizedWeight.from_qtensor(QTensor(codes, s, torch.zeros_like(s), self.spec, w.shape))


@register
class DoubleRoundingRecipe(Recipe):
    name = "double-rounding"
    default_bits = (8, 16)

    def check_bits(self, w_bits: int, a_bits: int) -> None:
        require(2 <= w_bits <= 8, f"double-rounding stores 2..8-bit weight codes, got {w_bits}")
        require(a_bits == 16, "double-rounding switches weight precision only: activations stay unquantized (16)")

    def weight_quantizer(self, weight, bits, cfg):
        return DoubleRoundingWeightQuantizer(weight, weight_spec(bits, cfg.group_size, grid="full"))


def _quantizers(model: nn.Module) -> dict[str, DoubleRoundingWeightQuantizer]:
    found = {
        n: m.weight_quantizer
        for n, m in model.named_modules()
        if isinstance(m, QuantLinear) and isinstance(m.weight_quantizer, DoubleRoundingWeightQuantizer)
    }
    require(found, "the model has no double-rounding layers: prepare it with the double-rounding recipe first")
    return found


def set_bits(model: nn.Module, bits: int | dict[str, int]) -> None:
    """Precision of every double-rounding layer's next forward (one width, or one per layer name)."""
    for name, q in _quantizers(model).items():
        q.bits = bits if isinstance(bits, int) else bits[name]


class ALRSHooks(TrainHooks):
    """Joint training's gradients. With ``alrs`` (Algorithm A.2) engine step ``k`` is precision
    ``bits[k % len(bits)]``: its backward, the engine's weight step, then the scales' step at the ALRS rate
    (``rates[b]``). Without (Algorithm A.1) one engine step runs every precision's backward."""

    def __init__(
        self, model: nn.Module, bits: tuple[int, ...], alrs: bool, betas: tuple[float, float], lam: float = 1.0
    ):
        self.bits, self.alrs, self.lam = bits, alrs, lam
        quantizers = _quantizers(model)
        self.high = max(q.spec.bits for q in quantizers.values())
        self.scales = [q.scale for q in quantizers.values()]
        fused = self.scales[0].device.type == "cuda"
        self.opt = torch.optim.AdamW(self.scales, lr=0.0, betas=betas, weight_decay=0.0, fused=fused) if alrs else None
        self.grads: list[Tensor] = []
        self.rates: dict[int, list[float]] = {b: [] for b in bits}

    def backward(self, model, batch, objective, step, total):
        if not self.alrs:
            loss = 0.0
            for b in self.bits:
                set_bits(model, b)
                part = objective(batch)
                part.backward()
                loss = loss + part.detach()
            return loss
        set_bits(model, self.bits[step % len(self.bits)])
        loss = objective(batch)
        loss.backward()
        self.grads = [s.grad if s.grad is not None else torch.zeros_like(s) for s in self.scales]
        for s in self.scales:  # the scales are the ALRS optimizer's: the engine's step leaves them alone
            s.grad = None
        return loss.detach()

    def after_step(self, model, opt, step, total):
        if not self.alrs:
            return
        b = self.bits[step % len(self.bits)]
        rate = alrs_rate(opt.param_groups[0]["lr"], b, self.high, self.grads, self.lam)
        self.rates[b].append(rate)
        for s, g in zip(self.scales, self.grads, strict=True):
            s.grad = g
        self.opt.param_groups[0]["lr"] = rate
        self.opt.step()
        for s in self.scales:
            s.grad = None

    def state_dict(self) -> dict:
        return self.opt.state_dict() if self.opt is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.opt is not None:
            self.opt.load_state_dict(state)


class _Optimizers:
    """The weights' optimizer and the ALRS ones, saved and resumed together (``qat.finetune._save``)."""

    def __init__(self, opt: torch.optim.Optimizer, hooks: ALRSHooks):
        self.opt, self.hooks = opt, hooks

    def state_dict(self) -> dict:
        return {"main": self.opt.state_dict(), "alrs": self.hooks.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["main"])
        self.hooks.load_state_dict(state["alrs"])


def joint_finetune(
    model: nn.Module,
    batches: Callable[[int], Tensor],
    steps: int,
    lr: float,
    bits: tuple[int, ...] = (8, 6, 4, 2),
    alrs: bool = True,
    alrs_lambda: float = 1.0,
    warmup_steps: int = 0,
    grad_clip: float = 1.0,
    state_dir: Path | None = None,
    save_every: int = 50,
    fingerprint: str = "",
    progress: bool = False,
) -> dict[int, list[float]]:
    """One-shot joint training of ``bits`` on a prepared model for ``steps`` iterations (one batch each); the
    training loss of each precision per iteration.

    ``alrs`` (Algorithm A.2): each precision updates the weights and, at its ALRS rate, the scales before the
    next precision runs (``len(bits)`` steps of qscale's engine per iteration: schedule, AdamW and clipping of
    ``qat_finetune``, the warm-up counted in iterations); ``alrs=False`` (Algorithm A.1): one AdamW step per
    iteration on the summed gradients; ``alrs_lambda``: Eq. 6's ``λ``. With ``state_dir`` the state is saved
    every ``save_every`` iterations and a re-run resumes from it (as ``qat_finetune``)."""
    quantizers = _quantizers(model)
    high = max(q.spec.bits for q in quantizers.values())
    require(steps >= 1 and lr > 0, "steps must be >= 1 and lr positive")
    require(all(2 <= b <= high for b in bits), f"joint bits must be in 2..{high}, got {bits}")
    require(alrs_lambda > 0, f"alrs_lambda must be positive, got {alrs_lambda}")
    per = len(bits) if alrs else 1  # engine steps per iteration
    optim = OptimConfig(lr=lr, warmup=warmup_steps * per, grad_clip=grad_clip)
    opt = make_optimizer(model, optim)
    hooks = ALRSHooks(model, tuple(bits), alrs, optim.betas, alrs_lambda)
    states = _Optimizers(opt, hooks)
    start, flat = _resume(state_dir, model, states, fingerprint)
    losses: dict[int, list[float]] = {b: flat[i :: len(bits)] for i, b in enumerate(bits)}

    def precision_loss(forward: nn.Module, batch: Tensor, step: int) -> Tensor:
        b = next(iter(quantizers.values())).bits
        loss = lm_loss(forward, batch)[0]
        losses[b].append(loss.item())
        require(math.isfinite(losses[b][-1]), f"loss at {b} bits is not finite at step {step // per + 1}: lower the lr")
        return loss

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("Double Rounding", total=steps, completed=start)

        def on_step(done: int, loss: float, lr_now: float) -> None:
            if done % per:
                return
            bar.update(task, completed=done // per)
            it = done // per
            if state_dir is not None and (it % save_every == 0 or it == steps):
                _save(
                    state_dir,
                    model,
                    states,
                    it,
                    [x for row in zip(*losses.values(), strict=True) for x in row],
                    fingerprint,
                )

        train_steps(
            model,
            lambda k: batches(k // per),
            optim,
            steps * per,
            opt=opt,
            loss_fn=precision_loss,
            start=start * per,
            on_step=on_step,
            hooks=hooks,
        )
    set_bits(model, high)
    return losses
