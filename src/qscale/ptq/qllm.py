"""``qllm``: QLLM (Liu et al. 2023, "QLLM: Accurate and Efficient Low-Bitwidth Quantization for LLMs",
arXiv 2310.08041) for weight-activation quantization (W4A4, W6A6), block by block.

1. Adaptive channel reassembly (§3.1), per linear layer, on its calibration inputs ``X``: with the channels'
   absmax ``m_c`` and a threshold θ, channel disassembly splits each channel into ``T_c = ⌈m_c/θ⌉``
   sub-channels ``x_c/T_c`` (each reading a copy of ``W_c``; exact), and channel assembly merges as many pairs of
   the other channels as there are new sub-channels, so the width stays ``n_in``: pairs by bipartite matching
   (the channels alternately in sets A and B, greedily the pair of least merge error
   ``D(a, b) = ‖(x_a − x_b)(W_a − W_b)ᵀ/2‖² = ¼‖x_a − x_b‖²‖W_a − W_b‖²`` over the calibration rows, each channel
   merged at most once), merged as ``(x_a + x_b)/2 · (W_a + W_b)``. θ is chosen per layer among
   ``max(m)·2^(−k/2)``, k = 0..8 (k = 0: no reassembly), by the least output error
   ``‖X Wᵀ − Q_a(M(X)) Q_w(W')ᵀ‖²`` with both quantizers (Eq. 4's adaptive search). Disassembly leaves the
   full-precision function unchanged; assembly changes it by exactly the merged pairs' errors.
2. Low-rank tuning of the frozen quantized model (§3.2, "efficient gradient-based error correction"): each
   layer's weight becomes ``Q_w(W' + A·B)`` (``A`` ``[out, r]`` zero, ``B`` ``[r, in]`` small random, as LoRA;
   round-to-nearest with the straight-through estimator on the fixed RTN scales of ``W'``, activations through
   ``Q_a``), and Adam trains ``A, B`` on the MSE of the block's output against the full-precision block on the
   same inputs; the tuned rounding is kept only if it lowers that error on a held-out calibration batch. ``A·B`` is fused into the integer
   codes, so inference costs nothing extra beyond the reassembly's gather-add.

Activations: per-token absmax (``qscale.quant.ste``, the ``ste`` recipe's activation quantizer), put on every
quantized layer by ``quantize_model``. The result is a ``QuantizedLinear`` with its reassembly index tensors
(stored by the qscale format only).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from rich.progress import track
from torch import Tensor, nn

from qscale.errors import QscaleError, require
from qscale.ptq.config import PTQConfig
from qscale.ptq.layers import find_blocks, get_weight, quantizable, replace_module
from qscale.ptq.learned_round import layer_inputs
from qscale.ptq.registry import register
from qscale.ptq.rtn import weight_stats
from qscale.ptq.sequential import capture_block_inputs, run_block
from qscale.quant import (
    QTensor,
    QuantizedLinear,
    QuantizedWeight,
    QuantSpec,
    compute_qparams,
    fake_quantize,
    grouped,
    require_finite,
    ungrouped,
)
from qscale.quant.reassembly import ChannelReassembly
from qscale.quant.ste import act_spec, round_ste, ste_fake_quantize

THETA_STEPS = 9  # θ = max(m)·2^(−k/2), k = 0..8
MAX_ROWS = 2048  # calibration rows used by the θ search and the merge error


def _rows(x: Tensor) -> Tensor:
    """At most ``MAX_ROWS`` evenly spaced rows of ``x``."""
    if x.shape[0] <= MAX_ROWS:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, MAX_ROWS).long()]


def merge_order(x: Tensor, w: Tensor, channels: Tensor, limit: int) -> list[tuple[int, int]]:
    """Up to ``limit`` disjoint pairs of ``channels`` in the order of least merge error ``D(a, b)``.

    ``x [rows, n_in]`` calibration inputs, ``w [out, n_in]``; A = the even positions of ``channels``, B the odd.
    """
    a, b = channels[0::2], channels[1::2]
    if limit <= 0 or len(b) == 0:
        return []
    dx = torch.cdist(x[:, a].t().double(), x[:, b].t().double()) ** 2
    dw = torch.cdist(w[:, a].t().double(), w[:, b].t().double()) ** 2
    order = torch.argsort((dx * dw / 4).flatten(), stable=True)
    used_a, used_b, pairs = set(), set(), []
    for k in order.tolist():
        i, j = divmod(k, len(b))
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((int(a[i]), int(b[j])))
        if len(pairs) == limit:
            break
    return pairs


def reassembly_for(x: Tensor, w: Tensor, absmax: Tensor, theta: float) -> ChannelReassembly | None:
    """The reassembly for threshold θ: split the channels with ``m_c > θ``, merge as many pairs of the other
    channels (``merge_order``); None if there are not enough of them to keep the width."""
    n = absmax.numel()
    splits = torch.ceil(absmax / theta).clamp_min(1).long().cpu()
    outliers = set(torch.nonzero(splits > 1).flatten().tolist())
    extras = int((splits - 1).sum())
    usable = merge_order(x, w, torch.nonzero(splits == 1).flatten().to(x.device), extras)
    if len(usable) < extras:
        return None
    coef = 1.0 / splits.double()
    dst = torch.arange(n)
    for p, q in usable:  # q's slot is freed: q joins p's slot
        dst[q] = p
        coef[p] = coef[q] = 0.5
    free = iter(q for _, q in usable)
    src, dst_extra, coef_extra = [], [], []
    for c in sorted(outliers):
        for _ in range(int(splits[c]) - 1):
            src.append(c)
            dst_extra.append(next(free))
            coef_extra.append(1.0 / float(splits[c]))
    return ChannelReassembly(torch.cat([torch.arange(n), torch.tensor(src, dtype=torch.long)]).to(x.device),
                             torch.cat([dst, torch.tensor(dst_extra, dtype=torch.long)]).to(x.device),
                             torch.cat([coef, torch.tensor(coef_extra, dtype=torch.double)]).float().to(x.device), n)


def search_reassembly(x: Tensor, w: Tensor, spec: QuantSpec, act_bits: int) -> tuple[ChannelReassembly | None, dict]:
    """The reassembly (None = none) of least quantized output error on the calibration rows ``x``, and its stats."""
    x = _rows(x).float()
    absmax = x.abs().amax(0)
    target = x @ w.t()
    aspec = None if act_bits == 16 else act_spec(act_bits, None)
    best = None
    for k in range(THETA_STEPS):
        theta = float(absmax.max()) * 2 ** (-k / 2)
        r = None if k == 0 else reassembly_for(x, w, absmax, theta)
        if k and r is None:
            break
        xr, wr = (x, w) if r is None else (r.apply(x), r.weight(w))
        xq = xr if aspec is None else fake_quantize(xr, aspec)
        err = float(((target - xq @ fake_quantize(wr, spec).t()) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, r, theta if k else math.inf)
    err, r, theta = best
    extras = 0 if r is None else r.src.numel() - r.width
    return r, {"theta": theta, "extra_channels": extras, "search_err": err / float((target**2).sum().clamp_min(1e-30))}


class QLLMLinear(nn.Module):
    """``y = Q_a(M(x)) · Q_w(W' + A·B)ᵀ + b`` during tuning (``quantize=False``: ``M(x) · W'ᵀ + b``, full precision)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, spec: QuantSpec, act_bits: int, rank: int,
                 reassembly: ChannelReassembly | None):
        super().__init__()
        require_finite(weight, "a weight")
        self.spec, self.reassembly, self.quantize = spec, reassembly, True
        w = weight.detach().float()
        w = w if reassembly is None else reassembly.weight(w)
        s, z = compute_qparams(w, spec)
        self.register_buffer("w", w)
        self.register_buffer("scale", torch.where(s > 0, s, torch.ones_like(s)))
        self.register_buffer("zero", z)
        self.aspec = None if act_bits == 16 else act_spec(act_bits, None)
        gen = torch.Generator().manual_seed(w.shape[0] * 7919 + w.shape[1])
        self.a = nn.Parameter(torch.zeros(w.shape[0], rank))
        self.b = nn.Parameter(torch.randn(rank, w.shape[1], generator=gen) / math.sqrt(w.shape[1]))
        self.bias = None if bias is None else bias.detach()

    def codes(self, ste: bool) -> Tensor:
        """Grouped-view codes ``clamp(round((W' + A·B)/s + z))`` (straight-through in training)."""
        u = grouped(self.w + self.a @ self.b, self.spec) / self.scale + self.zero
        return torch.clamp(round_ste(u) if ste else torch.round(u), self.spec.qmin, self.spec.qmax)

    def forward(self, x: Tensor) -> Tensor:
        if self.reassembly is not None:
            x = self.reassembly.apply(x)
        if not self.quantize:
            return F.linear(x, self.w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        if self.aspec is not None:
            x = ste_fake_quantize(x, self.aspec)
        w_hat = ungrouped((self.codes(ste=True) - self.zero) * self.scale, self.spec, self.w.shape)
        return F.linear(x, w_hat.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def freeze(self) -> QuantizedWeight:
        codes = ungrouped(self.codes(ste=False), self.spec, self.w.shape)
        codes = codes.to(torch.int8 if self.spec.symmetric else torch.uint8)
        return QuantizedWeight.from_qtensor(QTensor(codes, self.scale, self.zero, self.spec, self.w.shape))


def block_error(block: nn.Module, inputs: list, targets: list[Tensor]) -> float:
    """Mean over batches of the block output's MSE relative to the target's mean square."""
    with torch.no_grad():
        return sum(float(F.mse_loss(run_block(block, i).float(), t.float()) / t.float().pow(2).mean().clamp_min(1e-12))
                   for i, t in zip(inputs, targets)) / len(inputs)


def tune_block(block: nn.Module, layers: dict[str, QLLMLinear], inputs: list, targets: list[Tensor], steps: int,
               lr: float) -> tuple[float, float]:
    """Adam on every layer's ``A, B`` against the block's full-precision outputs; (error before, error after) on
    the held-out last calibration batch (when there are several: the rest train). If tuning did not lower
    that error, the low-rank terms are reset to zero (the start)."""
    held = (inputs[-1:], targets[-1:]) if len(inputs) > 1 else (inputs, targets)
    if len(inputs) > 1:
        inputs, targets = inputs[:-1], targets[:-1]
    before = block_error(block, *held)
    if steps == 0:
        return before, before
    params = [p for m in layers.values() for p in (m.a, m.b)]
    opt = torch.optim.Adam(params, lr=lr)
    scales = [float(t.float().pow(2).mean().clamp_min(1e-12)) for t in targets]
    for step in range(steps):
        i = step % len(inputs)
        loss = F.mse_loss(run_block(block, inputs[i]).float(), targets[i].float()) / scales[i]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    after = block_error(block, *held)
    if not after < before:
        with torch.no_grad():
            for m in layers.values():
                m.a.zero_()
        after = before
    return before, after


@register("qllm")
def qllm_model(model: nn.Module, cfg: PTQConfig, calib: Tensor | None, progress: bool = False) -> dict:
    """QLLM on every selected linear layer of the decoder blocks, block by block; per-layer stats."""
    require(calib is not None and calib.ndim == 2 and calib.numel() > 0,
            "qllm needs calibration token windows [n, T] drawn from the train split")
    was_training = model.training
    model.eval()
    targets_all = quantizable(model, cfg.skip)
    blocks_name, blocks = find_blocks(model)
    outside = [n for n in targets_all if not n.startswith(blocks_name + ".")]
    if outside:
        raise QscaleError(f"qllm quantizes decoder-block layers only: skip {outside[0]} (--skip)")
    model.requires_grad_(False)
    with torch.no_grad():
        inputs = capture_block_inputs(model, blocks[0], calib, progress)
    stats = {}
    for b, block in track(list(enumerate(blocks)), description="QLLM blocks", disable=not progress, transient=True):
        prefix = f"{blocks_name}.{b}."
        mods = {n: m for n, m in targets_all.items() if n.startswith(prefix)}
        with torch.no_grad():
            targets = [run_block(block, inp) for inp in inputs]
        xs = layer_inputs(block, mods, inputs)
        t0 = time.perf_counter()
        layers, found = {}, {}
        for name, mod in mods.items():
            w = get_weight(mod).float()
            r, found[name] = search_reassembly(xs[name], w, cfg.spec, cfg.act_bits)
            layers[name] = QLLMLinear(w, mod.bias, cfg.spec, cfg.act_bits, cfg.qllm_rank, r)
            replace_module(model, name, layers[name])
        before, after = tune_block(block, layers, inputs, targets, cfg.qllm_steps, cfg.qllm_lr) if layers else (0, 0)
        for name, layer in layers.items():
            qw = layer.freeze()
            source = mods[name]
            replace_module(model, name, QuantizedLinear(qw, source.bias, name=name, source=type(source).__name__,
                                                        reassembly=layer.reassembly))
            stats[name] = {**weight_stats(layer.w, qw.dequantize(), (time.perf_counter() - t0) / len(layers)),
                           **found[name], "block_err_rtn": before, "block_err_tuned": after}
        with torch.no_grad():
            inputs = [inp.with_hidden(run_block(block, inp)) for inp in inputs]
    model.train(was_training)
    return stats
