"""``double-rounding``: one-shot joint QAT of several weight precisions stored as one integer model
("Nearly Lossless Adaptive Bit Switching", Huang et al. 2025, arXiv 2502.01199).

Quantizer (Double Rounding): one learned step ``s`` per group at the highest precision ``h`` (symmetric full
grid, initialised to RTN's ``2·absmax/(2^h − 1)``); ``q_h = clamp(⌊W/s⌉, −2^(h−1), 2^(h−1) − 1)`` and each lower
precision ``b`` rounds the integers again, ``q_b = clamp(⌊q_h/2^(h−b)⌉, −2^(b−1), 2^(b−1) − 1)``,
``Ŵ_b = q_b · s·2^(h−b)`` — exactly what ``qscale.quant.switch.switch_bits`` derives from the stored ``q_h``, so the
converted model (``h``-bit codes, no float weights) serves every trained precision through
``load_quantized(path, bits=b)``. Rounding is straight-through, so ``∂Ŵ/∂s`` is LSQ's (``q − W/s`` inside,
the clamped code outside).

- **Joint training** (:func:`joint_finetune`): every step runs the LM loss at each precision of ``bits`` in
  turn and accumulates the gradients before one AdamW step.
- **ALRS** (adaptive learning-rate scaling of the scales): the shared ``s`` moves precision ``b``'s step
  ``s·2^(h−b)`` by ``2^(h−b)`` times more, relative to itself, than precision ``h``'s for the same gradient, so
  the low precisions dominate the scales' updates (the paper's "competitive interference"). Precision ``b``'s
  contribution to ``∂L/∂s`` is scaled by ``λ_b = 2^(b−h)`` (a per-precision learning rate of the scales under
  SGD; weights are not scaled). The paper's own schedule is not reproduced; this factor is our reading of it.
- **HASB** (Hessian-aware stochastic bit switching, for one-shot mixed precision): each layer's bits are
  sampled every step from ``p_l(b_k) ∝ exp(TEMP · z_l · k/(K−1))`` over the ascending widths ``b_0 < … < b_{K−1}``,
  where ``z_l`` is the standardised log of the magnitude of the Hessian trace of the layer's weight
  (Hutchinson's estimator on the full-precision model; away from a minimum an estimate can be negative):
  more sensitive layers sample higher precisions more often, an average layer uniformly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from rich.progress import Progress
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from qscale.errors import require
from qscale.qat.finetune import _resume, _save
from qscale.qat.linear import QuantLinear, WeightQuantizer
from qscale.qat.registry import Recipe, register
from qscale.qat.ste import weight_spec
from qscale.quant import QTensor, QuantizedWeight, QuantSpec, compute_qparams, grouped, require_finite, ungrouped
from qscale.quant.ste import round_ste
from qscale.train.engine import OptimConfig, lm_loss, make_optimizer, train_steps

TEMP = 2.0


def alrs_factor(bits: int, high: int) -> float:
    """ALRS's factor ``λ_b = 2^(b−h)`` on precision ``b``'s gradient of the shared scales."""
    return 2.0 ** (bits - high)


def _scale_grad(t: Tensor, factor: float) -> Tensor:
    """``t`` in the forward pass, ``factor · grad`` in the backward pass."""
    return t if factor == 1.0 else t * factor + (t * (1 - factor)).detach()


class DoubleRoundingWeightQuantizer(WeightQuantizer):
    """Learned per-group step at the highest precision; ``bits`` selects the precision of the next forward."""

    def __init__(self, weight: Tensor, spec: QuantSpec):
        super().__init__()
        require(spec.symmetric and spec.bits >= 2, "double-rounding needs a symmetric grid of at least 2 bits")
        self.spec = spec
        s, _ = compute_qparams(weight.detach().float(), spec)
        self.scale = nn.Parameter(s.clamp_min(1e-8))
        self.bits = spec.bits
        self.alrs = True

    def forward(self, w: Tensor) -> Tensor:
        require_finite(w, "a weight")
        h, b = self.spec.bits, self.bits
        require(2 <= b <= h, f"double-rounding switches {h}-bit codes to 2..{h} bits, not {b}")
        s = _scale_grad(self.scale, alrs_factor(b, h) if self.alrs else 1.0)
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
    found = {n: m.weight_quantizer for n, m in model.named_modules()
             if isinstance(m, QuantLinear) and isinstance(m.weight_quantizer, DoubleRoundingWeightQuantizer)}
    require(found, "the model has no double-rounding layers: prepare it with the double-rounding recipe first")
    return found


def set_bits(model: nn.Module, bits: int | dict[str, int]) -> None:
    """Precision of every double-rounding layer's next forward (one width, or one per layer name)."""
    for name, q in _quantizers(model).items():
        q.bits = bits if isinstance(bits, int) else bits[name]


def joint_finetune(model: nn.Module, batches: Callable[[int], Tensor], steps: int, lr: float,
                   bits: tuple[int, ...] = (8, 6, 4, 2), alrs: bool = True, warmup_steps: int = 0,
                   grad_clip: float = 1.0, state_dir: Path | None = None, save_every: int = 50,
                   fingerprint: str = "", progress: bool = False) -> dict[int, list[float]]:
    """One-shot joint training of ``bits`` on a prepared model; the training loss of each precision per step.

    Each step's loss is the sum of the LM losses at every precision (one AdamW step on the summed
    gradients), trained by qscale's engine (schedule, AdamW, clipping of ``qat_finetune``); with ``state_dir``
    the state is saved every ``save_every`` steps and a re-run resumes from it (as ``qat_finetune``)."""
    quantizers = _quantizers(model)
    high = max(q.spec.bits for q in quantizers.values())
    require(steps >= 1 and lr > 0, "steps must be >= 1 and lr positive")
    require(all(2 <= b <= high for b in bits), f"joint bits must be in 2..{high}, got {bits}")
    for q in quantizers.values():
        q.alrs = alrs
    optim = OptimConfig(lr=lr, warmup=warmup_steps, grad_clip=grad_clip)
    opt = make_optimizer(model, optim)
    start, flat = _resume(state_dir, model, opt, fingerprint)
    losses: dict[int, list[float]] = {b: flat[i::len(bits)] for i, b in enumerate(bits)}

    def joint_loss(forward: nn.Module, batch: Tensor, step: int) -> Tensor:
        total = 0.0
        for b in bits:
            set_bits(model, b)
            loss = lm_loss(forward, batch)[0]
            losses[b].append(loss.item())
            require(math.isfinite(losses[b][-1]), f"loss at {b} bits is not finite at step {step + 1}: lower the lr")
            total = total + loss
        return total

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("Double Rounding", total=steps, completed=start)

        def on_step(done: int, loss: float, lr_now: float) -> None:
            bar.update(task, completed=done)
            if state_dir is not None and (done % save_every == 0 or done == steps):
                _save(state_dir, model, opt, done, [x for row in zip(*losses.values()) for x in row], fingerprint)

        train_steps(model, batches, optim, steps, opt=opt, loss_fn=joint_loss, start=start, on_step=on_step)
    set_bits(model, high)
    return losses


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
    """HASB's sampling distribution over the ascending ``bits`` for each layer (see the module docstring)."""
    widths = sorted(bits)
    require(len(widths) >= 2, "HASB needs at least 2 widths")
    require(all(math.isfinite(t) and t != 0 for t in traces.values()), "HASB needs finite, non-zero Hessian traces")
    logs = torch.tensor([math.log(abs(t)) for t in traces.values()], dtype=torch.float64)
    std = float(logs.std()) if len(logs) > 1 else 0.0
    z = (logs - logs.mean()) / std if std > 0 else torch.zeros_like(logs)
    k = torch.arange(len(widths), dtype=torch.float64) / (len(widths) - 1)
    return {n: torch.softmax(TEMP * zl * k, 0) for n, zl in zip(traces, z)}


def sample_bits(probs: dict[str, Tensor], bits: tuple[int, ...], gen: torch.Generator) -> dict[str, int]:
    """One draw of every layer's width from its HASB distribution."""
    widths = sorted(bits)
    return {n: widths[int(torch.multinomial(p, 1, generator=gen))] for n, p in probs.items()}


def hasb_finetune(model: nn.Module, batches: Callable[[int], Tensor], steps: int, lr: float,
                  probs: dict[str, Tensor], bits: tuple[int, ...] = (8, 6, 4, 2), seed: int = 0,
                  grad_clip: float = 1.0, progress: bool = False) -> list[float]:
    """One-shot mixed-precision training: each step every layer runs at a width drawn by HASB (with ALRS)."""
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
