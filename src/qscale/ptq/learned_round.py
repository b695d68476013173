"""``learned-round``: gradient-based PTQ with learned rounding, block by block.

The seed paper is "Gradient-Based Post-Training Quantization: Challenging the Status Quo" (Yvinec, Dapogny,
Bailly 2023, arXiv 2308.07662); the rounding it studies is AdaRound's (Nagel et al. 2020, arXiv 2004.10568,
eqs. 21–24) as BRECQ implements it (Li et al. 2021, github:yhhhli/BRECQ, ``quant/adaptive_rounding.py``,
``quant/block_recon.py``): each weight is ``floor(W/s) + h(V)`` with the rectified sigmoid
``h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1)`` (ζ = 1.1, γ = −0.1), ``V`` initialised so that ``h(V)`` is the
fractional part of ``W/s`` (the start is the unrounded weight), and the regulariser ``Σ 1 − |2h(V) − 1|^β``
(weight 0.01) with β held at 20 for the first 20 % of the steps (no regulariser then) and annealed linearly to 2
(BRECQ's ``LinearTempDecay``). The scale ``s`` is not the absmax one: it is BRECQ's ``scale_method='mse'``
range search (``qscale.ptq.clip``), which at 2–3 bits clips the largest weights. Following the seed paper's
best practices, the loss is the MSE of each decoder block's output against the full-precision block on the
same calibration inputs, optimised with Adam, the degrees of freedom being the rounding variables (and, with
``learn_scale``, the per-group scales). The block's inputs are the outputs of the already quantized blocks
before it, as in GPTQ. At the end ``h`` is hardened to {0, 1}; each layer keeps, of the hardened learned
codes, round-to-nearest on the same scale and the ``rtn`` method's round-to-nearest on the absmax scale, the
one that reconstructs its outputs on its calibration inputs best (so per layer it is never worse than
``rtn`` there); it becomes a ``QuantizedLinear`` on the spec's grid (symmetric: the full
GPTQ/compressed-tensors grid). With ``avg_bits`` the widths are allocated per layer by the seed paper's
importance-based mixed precision (``qscale.ptq.mixed``) before the blocks are learned.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from rich.progress import track
from torch import Tensor, nn

from qscale.ptq.clip import mse_qparams
from qscale.ptq.config import PTQConfig
from qscale.ptq.layers import get_bias, get_weight, replace_module
from qscale.ptq.mixed import allocate_bits, fisher_diagonal, sensitivities
from qscale.ptq.registry import register
from qscale.ptq.rtn import weight_stats
from qscale.ptq.sequential import block_layers, capture_block_inputs, require_calib, run_block
from qscale.quant import (
    QTensor,
    QuantizedLinear,
    QuantizedWeight,
    QuantSpec,
    compute_qparams,
    grouped,
    require_finite,
    ungrouped,
)

ZETA, GAMMA = 1.1, -0.1
REG_WEIGHT = 0.01
BETA_START, BETA_END, WARMUP = 20.0, 2.0, 0.2


def rectified_sigmoid(v: Tensor) -> Tensor:
    """``h(V)`` of AdaRound eq. 23."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def rounding_regulariser(h: Tensor, beta: float) -> Tensor:
    """``Σ 1 − |2h − 1|^β`` (AdaRound eq. 24): zero exactly when every ``h`` is 0 or 1."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def beta_at(step: int, steps: int) -> float:
    """β at the 0-based ``step`` of ``steps``: BRECQ's ``LinearTempDecay`` at its count ``t = step + 1``, held at
    20 while ``t < 0.2·steps``, then ``2 + 18·max(0, 1 − (t − 0.2·steps)/(0.8·steps))``."""
    t, start = step + 1, WARMUP * steps
    if t < start:
        return BETA_START
    return BETA_END + (BETA_START - BETA_END) * max(0.0, 1 - (t - start) / (steps - start))


def regularised(step: int, steps: int) -> bool:
    """Whether the rounding regulariser is on at ``step`` (BRECQ: from count ``t = step + 1 >= 0.2·steps``)."""
    return step + 1 >= WARMUP * steps


class LearnedRoundLinear(nn.Module):
    """A linear layer whose weight is ``(clamp(floor(W/s) + z + h(V), qmin, qmax) − z)·s`` during learning."""

    w: Tensor  # buffers registered in __init__
    zero: Tensor

    def __init__(self, weight: Tensor, bias: Tensor | None, spec: QuantSpec, learn_scale: bool):
        super().__init__()
        require_finite(weight, "a weight")
        self.spec = spec
        w = weight.detach().float()
        s, z = mse_qparams(w, spec)
        s = torch.where(s > 0, s, torch.ones_like(s))
        self.register_buffer("w", w)
        self.register_buffer("zero", z)
        self.scale = nn.Parameter(s, requires_grad=learn_scale)
        frac = grouped(w, spec) / s - torch.floor(grouped(w, spec) / s)
        p = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)  # invert h: start at the unrounded weight
        self.v = nn.Parameter(torch.log(p / (1 - p)))
        self.bias = None if bias is None else bias.detach()

    def codes(self, hard: bool) -> Tensor:
        """Grouped-view codes: soft (``floor + h``, in training) or hardened (``h >= 1/2`` → 1)."""
        base = torch.floor(grouped(self.w, self.spec) / self.scale.detach()) + self.zero
        h = rectified_sigmoid(self.v)
        return torch.clamp(base + ((h >= 0.5).float() if hard else h), self.spec.qmin, self.spec.qmax)

    def rtn_codes(self) -> Tensor:
        """Round-to-nearest codes with the same scale (the baseline learned rounding must not lose to)."""
        u = torch.round(grouped(self.w, self.spec) / self.scale.detach()) + self.zero
        return torch.clamp(u, self.spec.qmin, self.spec.qmax)

    def weight(self) -> Tensor:
        q = self.codes(hard=False)
        return ungrouped((q - self.zero) * self.scale, self.spec, self.w.shape)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def freeze(self, x: Tensor) -> QuantizedWeight:
        """Of the hardened learned codes, RTN on the same scale and the ``rtn`` method's (absmax) RTN, the one
        that reconstructs this layer's outputs on ``x`` best."""
        s_abs, z_abs = compute_qparams(self.w, self.spec)
        s_abs = torch.where(s_abs > 0, s_abs, torch.ones_like(s_abs))
        rtn_abs = torch.clamp(torch.round(grouped(self.w, self.spec) / s_abs + z_abs), self.spec.qmin, self.spec.qmax)
        best: tuple[float, Tensor, Tensor, Tensor] | None = None
        for grouped_codes, s, z in (
            (self.codes(hard=True), self.scale.detach(), self.zero),
            (self.rtn_codes(), self.scale.detach(), self.zero),
            (rtn_abs, s_abs, z_abs),
        ):
            w_hat = ungrouped((grouped_codes - z) * s, self.spec, self.w.shape)
            err = float(((x @ (self.w - w_hat).t()) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, grouped_codes, s, z)
        assert best is not None  # three candidates were scored
        _, grouped_codes, s, z = best
        codes = ungrouped(grouped_codes, self.spec, self.w.shape).to(torch.int8 if self.spec.symmetric else torch.uint8)
        return QuantizedWeight.from_qtensor(QTensor(codes, s.clone(), z.clone(), self.spec, self.w.shape))


def layer_inputs(block: nn.Module, layers: Mapping[str, nn.Module], inputs: list) -> dict[str, Tensor]:
    """The rows each layer reads during a forward of ``block`` on ``inputs`` (``[rows, in]``, float32)."""
    seen: dict[str, list[Tensor]] = {n: [] for n in layers}
    hooks = [
        m.register_forward_pre_hook(lambda mod, a, n=n: seen[n].append(a[0].reshape(-1, a[0].shape[-1]).float()))
        for n, m in layers.items()
    ]
    try:
        with torch.no_grad():
            for inp in inputs:
                run_block(block, inp)
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def learn_block(
    block: nn.Module, layers: dict[str, LearnedRoundLinear], inputs: list, targets: list[Tensor], steps: int, lr: float
) -> float:
    """Adam on the rounding variables (and scales) of one block: the output MSE relative to the target's mean
    square (so the regulariser's weight does not depend on the activations' scale) + the annealed regulariser."""
    params = [p for m in layers.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    scales = [float(t.float().pow(2).mean().clamp_min(1e-12)) for t in targets]
    for step in range(steps):
        i = step % len(inputs)
        loss = F.mse_loss(run_block(block, inputs[i]).float(), targets[i].float()) / scales[i]
        beta = beta_at(step, steps)
        if regularised(step, steps):
            reg = sum(rounding_regulariser(rectified_sigmoid(m.v), beta) for m in layers.values())
            loss = loss + REG_WEIGHT * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def mixed_specs(model: nn.Module, layers: dict[str, nn.Module], calib: Tensor, cfg: PTQConfig) -> dict[str, QuantSpec]:
    """Each layer's quantizer: ``cfg.spec``, or with ``cfg.avg_bits`` the importance-based allocation's widths."""
    if cfg.avg_bits is None:
        return dict.fromkeys(layers, cfg.spec)
    sens = sensitivities({n: get_weight(m) for n, m in layers.items()}, fisher_diagonal(model, layers, calib), cfg.spec)
    bits = allocate_bits(sens, {n: get_weight(m).numel() for n, m in layers.items()}, cfg.avg_bits)
    return {n: dataclasses.replace(cfg.spec, bits=b) for n, b in bits.items()}


@register("learned-round")
def learned_round_model(model: nn.Module, cfg: PTQConfig, calib: Tensor | None, progress: bool = False) -> dict:
    """Learned rounding of every selected linear layer of the decoder blocks, block by block; per-layer stats."""
    calib = require_calib(calib, "learned-round")
    targets_all, blocks_name, blocks = block_layers(model, cfg, calib, "learned-round")
    was_training = model.training
    model.eval()
    model.requires_grad_(False)
    specs = mixed_specs(model, targets_all, calib, cfg)
    with torch.no_grad():
        inputs = capture_block_inputs(model, blocks[0], calib, progress)
    stats = {}
    for b, block in track(
        list(enumerate(blocks)), description="learned rounding", disable=not progress, transient=True
    ):
        prefix = f"{blocks_name}.{b}."
        with torch.no_grad():
            targets = [run_block(block, inp) for inp in inputs]
        t0 = time.perf_counter()
        layers = {}
        for name, mod in targets_all.items():
            if name.startswith(prefix):
                layers[name] = LearnedRoundLinear(get_weight(mod), get_bias(mod), specs[name], cfg.learn_scale)
                replace_module(model, name, layers[name])
        loss = learn_block(block, layers, inputs, targets, cfg.round_steps, cfg.round_lr) if layers else math.nan
        xs = layer_inputs(block, layers, inputs)
        for name, layer in layers.items():
            qw = layer.freeze(xs[name])
            source = targets_all[name]
            replace_module(model, name, QuantizedLinear(qw, get_bias(source), name=name, source=type(source).__name__))
            stats[name] = {
                **weight_stats(layer.w, qw.dequantize(), (time.perf_counter() - t0) / len(layers)),
                "block_loss": loss,
                "bits": layer.spec.bits,
            }
        with torch.no_grad():
            inputs = [inp.with_hidden(run_block(block, inp)) for inp in inputs]
    model.train(was_training)
    return stats
