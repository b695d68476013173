"""``qllm``: QLLM (Liu et al. 2023, "QLLM: Accurate and Efficient Low-Bitwidth Quantization for LLMs",
arXiv 2310.08041; authors' code github:ModelTC/QLLM) for weight-activation quantization (W4A4, W6A6), block by block.

1. Adaptive channel reassembly (§3.1, Eq. 4), as the authors' ``QLLMLlamaDecoderLayer`` places it: one
   reassembly of the ``input_layernorm`` output shared by q/k/v, scored on the attention output; one of the
   ``post_attention_layernorm`` output shared by gate/up, scored on the SwiGLU output ``act(gate)·up``; one of
   the input of ``down``, scored on its output; none on ``o``. Found generically as the block's four groups
   of layers reading one tensor (``reassembly_plan``). The search (θ in ≥ 100 linear steps, at most
   ``⌊0.1·C⌋`` added channels, the authors' matching and merge) is ``qllm_search``; each candidate is scored by
   running the full-precision block with only that group's layers quantized (``Q_a(M(x))·Q_w(W')ᵀ``) on the
   first calibration batch (the authors' ``calibrate_bs`` samples), the channel maxima coming from every batch.
   The statistics come from the block's current inputs (the outputs of the quantized blocks before it; the
   authors take them from the full-precision model).
2. Low-rank tuning of the frozen quantized model (§3.2, "efficient gradient-based error correction"): each
   layer's weight becomes ``Q_w(W' + A·B)`` (``A`` ``[out, r]`` zero, ``B`` ``[r, in]`` small random, as LoRA;
   round-to-nearest with the straight-through estimator on the fixed RTN scales of ``W'``, activations through
   ``Q_a``), and Adam trains ``A, B`` on the MSE of the block's output against the full-precision block on the
   same inputs; the tuned rounding is kept only if it lowers that error on a held-out calibration batch.
   ``A·B`` is fused into the integer codes, so inference costs nothing extra beyond the reassembly's gather-add.
   This differs from the authors' code on purpose: their ``LoRAQuantLinear`` trains ``Q_w(W') + B·A`` (the
   low-rank term in full precision) against the full-precision model's block outputs, then merges ``B·A``
   into ``W'`` and re-quantizes; training through the quantizer here makes the stored codes exactly what was
   tuned.

Activations: dynamic asymmetric per-token min/max (``act_quant_spec``, the authors' ``act_quant_params``), put
on every quantized layer by this method. The result is a ``QuantizedLinear`` with its reassembly index tensors
(stored by the qscale format only).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from rich.progress import track
from torch import Tensor, nn

from qscale.errors import require
from qscale.ptq.config import PTQConfig
from qscale.ptq.layers import get_bias, get_weight, replace_module
from qscale.ptq.learned_round import layer_inputs
from qscale.ptq.qllm_search import stage_reassembly
from qscale.ptq.registry import register
from qscale.ptq.rtn import weight_stats
from qscale.ptq.sequential import _stages, block_layers, capture_block_inputs, require_calib, run_block
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
from qscale.quant.ste import STEActQuantizer, round_ste, ste_fake_quantize

ACT_BITS_NONE = 16


class _Halt(Exception):
    """Raised from a hook to end a block's forward pass once the scored tensor is seen."""


def act_quant_spec(bits: int) -> QuantSpec:
    """QLLM's activation quantizer: dynamic, asymmetric (min/max) per token (the authors' ``act_quant_params``:
    ``symmetric: False``, ``dynamic_method: per_token``). qscale's asymmetric range is widened to contain 0,
    which equals the authors' ``[min, max]`` for every token holding both signs."""
    return QuantSpec(bits, symmetric=False, granularity="token", group_size=None)


class _Probe(nn.Module):
    """``Q_a(M(x)) · Q_w(W')ᵀ + b`` with fixed fake-quantized ``W'``: a candidate reassembly in the θ search."""

    def __init__(self, w_hat: Tensor, bias: Tensor | None, r: ChannelReassembly, aspec: QuantSpec | None):
        super().__init__()
        self.w_hat, self.bias, self.r, self.aspec = w_hat, bias, r, aspec

    def forward(self, x: Tensor) -> Tensor:
        x = self.r.apply(x)
        if self.aspec is not None:
            x = fake_quantize(x, self.aspec)
        return F.linear(x, self.w_hat.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def _capture(model: nn.Module, block: nn.Module, inp, name: str, output: bool) -> Tensor:
    """The input (or output) of the layer ``name`` in a forward of ``block`` on ``inp``."""
    got = []

    def hook(mod, args, out=None):
        got.append((out if output else args[0]).detach().float())
        raise _Halt

    mod = model.get_submodule(name)
    handle = mod.register_forward_hook(hook) if output else mod.register_forward_pre_hook(hook)
    try:
        run_block(block, inp)
    except _Halt:
        pass
    finally:
        handle.remove()
    return got[0]


def _absmax(block: nn.Module, layers: dict[str, nn.Module], inputs: list) -> dict[str, Tensor]:
    """Each layer's input channel absmax over every calibration row (float32, ``[in]``)."""
    out: dict[str, Tensor] = {}

    def hook(name, mod, args):
        m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
        out[name] = m if name not in out else torch.maximum(out[name], m)

    handles = [m.register_forward_pre_hook(lambda mod, a, n=n: hook(n, mod, a)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            for inp in inputs:
                run_block(block, inp)
    finally:
        for h in handles:
            h.remove()
    return out


def reassembly_plan(
    block: nn.Module, inp, mods: dict[str, nn.Module], prefix: str
) -> list[tuple[list[str], str, bool]]:
    """The authors' three reassembly points of a block: ``(layers sharing the input, scored layer, its output?)``.

    The block's layers in call order, grouped by the tensor they read (``q/k/v``, ``o``, ``gate/up``, ``down``
    in a Llama block): q/k/v are scored on the attention output (the input of ``o``), gate/up on the SwiGLU
    output (the input of ``down``), ``down`` on its own output; ``o`` gets none (QLLM's
    ``QLLMLlamaDecoderLayer``: ``input_layernorm_crm``, ``post_attention_layernorm_crm``, ``down_proj_crm``).
    """
    stages = _stages(block, inp, mods)
    require(
        len(stages) == 4,
        f"qllm needs decoder blocks whose quantized linear layers read 4 tensors in turn "
        f"(q/k/v, o, gate/up, down); {prefix.rstrip('.')} has {[len(s) for s in stages]}",
    )
    return [(stages[0], stages[1][0], False), (stages[2], stages[3][0], False), (stages[3], stages[3][0], True)]


def search_stage(
    model: nn.Module,
    block: nn.Module,
    inp,
    names: list[str],
    scored: str,
    output: bool,
    x: Tensor,
    absmax: Tensor,
    spec: QuantSpec,
    act_bits: int,
) -> tuple[ChannelReassembly | None, dict]:
    """QLLM's reassembly of the input shared by ``names``, scored by the MSE of the tensor at ``scored`` (its
    input, or its output) with only these layers quantized (``Q_a(M(x))``, ``Q_w(W')``) against full precision."""
    mods = {n: model.get_submodule(n) for n in names}
    weights = {n: get_weight(m).float() for n, m in mods.items()}
    ref = _capture(model, block, inp, scored, output)
    aspec = None if act_bits == ACT_BITS_NONE else act_quant_spec(act_bits)

    def score(r: ChannelReassembly) -> float:
        for n, m in mods.items():
            replace_module(model, n, _Probe(fake_quantize(r.weight(weights[n]), spec), get_bias(m), r, aspec))
        try:
            with torch.no_grad():
                got = _capture(model, block, inp, scored, output)
        finally:
            for n, m in mods.items():
                replace_module(model, n, m)
        return float(F.mse_loss(got, ref))

    return stage_reassembly(x.float(), torch.cat(list(weights.values())), absmax, score)


class QLLMLinear(nn.Module):
    """``y = Q_a(M(x)) · Q_w(W' + A·B)ᵀ + b`` during tuning (``quantize=False``: ``M(x) · W'ᵀ + b``, full precision)."""

    w: Tensor  # buffers registered in __init__
    scale: Tensor
    zero: Tensor

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        spec: QuantSpec,
        act_bits: int,
        rank: int,
        reassembly: ChannelReassembly | None,
    ):
        super().__init__()
        require_finite(weight, "a weight")
        self.spec, self.reassembly, self.quantize = spec, reassembly, True
        w = weight.detach().float()
        w = w if reassembly is None else reassembly.weight(w)
        s, z = compute_qparams(w, spec)
        self.register_buffer("w", w)
        self.register_buffer("scale", torch.where(s > 0, s, torch.ones_like(s)))
        self.register_buffer("zero", z)
        self.aspec = None if act_bits == ACT_BITS_NONE else act_quant_spec(act_bits)
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
        return sum(
            float(F.mse_loss(run_block(block, i).float(), t.float()) / t.float().pow(2).mean().clamp_min(1e-12))
            for i, t in zip(inputs, targets, strict=True)
        ) / len(inputs)


def tune_block(
    block: nn.Module, layers: dict[str, QLLMLinear], inputs: list, targets: list[Tensor], steps: int, lr: float
) -> tuple[float, float]:
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
    calib = require_calib(calib, "qllm")
    targets_all, blocks_name, blocks = block_layers(model, cfg, calib, "qllm")
    was_training = model.training
    model.eval()
    model.requires_grad_(False)
    with torch.no_grad():
        inputs = capture_block_inputs(model, blocks[0], calib, progress)
    aspec = None if cfg.act_bits == ACT_BITS_NONE else act_quant_spec(cfg.act_bits)
    stats = {}
    for b, block in track(list(enumerate(blocks)), description="QLLM blocks", disable=not progress, transient=True):
        prefix = f"{blocks_name}.{b}."
        mods = {n: m for n, m in targets_all.items() if n.startswith(prefix)}
        if not mods:
            continue
        with torch.no_grad():
            targets = [run_block(block, inp) for inp in inputs]
        t0 = time.perf_counter()
        plan = reassembly_plan(block, inputs[0], mods, prefix)
        firsts = {names[0]: mods[names[0]] for names, _, _ in plan}
        absmax = _absmax(block, firsts, inputs)
        rows = layer_inputs(block, firsts, inputs[:1])  # the authors match and score on the first calibration batch
        found: dict[str, tuple] = {}
        for names, scored, output in plan:
            r, st = search_stage(
                model, block, inputs[0], names, scored, output, rows[names[0]], absmax[names[0]], cfg.spec, cfg.act_bits
            )
            found.update(dict.fromkeys(names, (r, st)))
        layers = {}
        for name, mod in mods.items():
            r, _ = found.get(name, (None, None))
            layers[name] = QLLMLinear(get_weight(mod).float(), get_bias(mod), cfg.spec, cfg.act_bits, cfg.qllm_rank, r)
            replace_module(model, name, layers[name])
        before, after = tune_block(block, layers, inputs, targets, cfg.qllm_steps, cfg.qllm_lr)
        for name, layer in layers.items():
            qw = layer.freeze()
            source = mods[name]
            act = None if aspec is None else STEActQuantizer(aspec)
            replace_module(
                model,
                name,
                QuantizedLinear(
                    qw, get_bias(source), act, name=name, source=type(source).__name__, reassembly=layer.reassembly
                ),
            )
            st = found.get(name, (None, {"theta": math.inf, "extra_channels": 0, "search_mse": math.nan}))[1]
            stats[name] = {
                **weight_stats(layer.w, qw.dequantize(), (time.perf_counter() - t0) / len(layers)),
                **st,
                "block_err_rtn": before,
                "block_err_tuned": after,
            }
        with torch.no_grad():
            inputs = [inp.with_hidden(run_block(block, inp)) for inp in inputs]
    model.train(was_training)
    return stats
