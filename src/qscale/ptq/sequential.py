"""GPTQ applied block by block to any HF causal LM (Frantar et al. 2022, §4 and "true-sequential").

The inputs of the first decoder block (hidden states plus keyword arguments such as the attention
mask, position ids or rotary embeddings) are captured once with a hook. Then, for each block, its
linear layers are quantized in forward order, in stages of layers that read the same tensor (q/k/v,
then o, then gate/up, then down): each stage's Hessian is collected by re-running the block on
the current inputs up to that stage, so later layers see the already-quantized earlier ones; the
layers of a stage share that Hessian and are quantized together as one stacked matrix. The block's outputs,
recomputed with quantized weights, are the next block's inputs. Linear layers outside the blocks
that are not skipped (e.g. an LM head) are calibrated last on the quantized model. Each quantized layer
is replaced by its ``QuantizedLinear`` (integer codes kept, packed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from rich.progress import track
from torch import Tensor, nn

from qscale.errors import QscaleError, require
from qscale.ptq.config import PTQConfig
from qscale.ptq.gptq import gptq_quantize, split_rows
from qscale.ptq.layers import find_blocks, get_weight, quantizable, to_quantized_linear
from qscale.ptq.registry import register
from qscale.ptq.rtn import weight_stats

CALIB_BATCH = 16  # calibration windows per forward pass


class _Stop(Exception):
    """Raised from a hook to end a forward pass early."""


@dataclass
class BlockInput:
    """One calibration batch's inputs to the current block."""

    args: tuple
    kwargs: dict

    def hidden(self) -> Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, h: Tensor) -> BlockInput:
        if self.args:
            return BlockInput((h, *self.args[1:]), self.kwargs)
        return BlockInput(self.args, {**self.kwargs, "hidden_states": h})


def run_block(block: nn.Module, inp: BlockInput) -> Tensor:
    """The block's hidden-state output for one captured batch of its inputs."""
    out = block(*inp.args, **inp.kwargs)
    return out[0] if isinstance(out, tuple) else out


def require_calib(calib: Tensor | None, method: str) -> Tensor:
    """``calib`` if it holds calibration token windows ``[n, T]``; otherwise the error naming ``method``."""
    if calib is None or calib.ndim != 2 or calib.numel() == 0:
        raise QscaleError(f"{method} needs calibration token windows [n, T] drawn from the train split")
    return calib


def block_layers(
    model: nn.Module, cfg: PTQConfig, calib: Tensor | None, method: str
) -> tuple[dict[str, nn.Module], str, nn.ModuleList]:
    """The selected layers, the blocks' name and the blocks of a block-wise method (learned-round, qllm),
    after its checks: calibration windows given and every selected layer inside a decoder block."""
    require_calib(calib, method)
    targets = quantizable(model, cfg.skip)
    blocks_name, blocks = find_blocks(model)
    outside = [n for n in targets if not n.startswith(blocks_name + ".")]
    if outside:
        raise QscaleError(f"{method} quantizes decoder-block layers only: skip {outside[0]} (--skip)")
    return targets, blocks_name, blocks


def capture_block_inputs(model: nn.Module, block: nn.Module, calib: Tensor, progress: bool) -> list[BlockInput]:
    captured = []

    def pre_hook(mod, args, kwargs):
        captured.append(BlockInput(args, dict(kwargs)))
        raise _Stop

    device = next(model.parameters()).device
    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for ids in track(calib.split(CALIB_BATCH), description="calibration", disable=not progress, transient=True):
            try:
                model(input_ids=ids.to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def _stages(block: nn.Module, inp: BlockInput, layers: dict[str, nn.Module]) -> list[list[str]]:
    """Layers in the order the block calls them, grouped into runs that read the same input tensor."""
    calls: list[tuple[str, Tensor]] = []

    def hook(name, mod, args, out):
        if all(name != n for n, _ in calls):
            calls.append((name, args[0]))

    handles = [m.register_forward_hook(partial(hook, n)) for n, m in layers.items()]
    try:
        run_block(block, inp)
    finally:
        for h in handles:
            h.remove()
    stages: list[list[str]] = []
    last_input = None
    for name, x in calls:
        if stages and x is last_input:
            stages[-1].append(name)
        else:
            stages.append([name])
        last_input = x
    return stages


def _hessians(layers: dict[str, nn.Module], run_all: Callable[[], None], stop_after: str | None) -> dict[str, Tensor]:
    """``H = (2/n) Σ x xᵀ`` over every input row each layer sees while ``run_all()`` runs forwards.

    If ``stop_after`` names a layer, each forward pass is cut short right after that layer.
    """
    sums: dict[str, Tensor] = {}
    rows = dict.fromkeys(layers, 0)

    def hook(name, mod, args, out):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        if name not in sums:
            sums[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
        sums[name].addmm_(x.t(), x)
        rows[name] += x.shape[0]
        if name == stop_after:
            raise _Stop

    handles = [m.register_forward_hook(partial(hook, n)) for n, m in layers.items()]
    try:
        run_all()
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] * (2 / rows[n]) for n in layers}


def _gptq_layers(
    model: nn.Module, names: list[str], prefix: str, layers: dict[str, nn.Module], H: Tensor, cfg: PTQConfig
) -> dict[str, dict]:
    """GPTQ layers that read the same input (hence share ``H``) as one matrix of stacked rows.

    Rows are independent given ``H`` (per-row scales and error propagation; a per-tensor scale is kept per
    layer through ``row_splits``), so this equals quantizing each layer alone, with one column loop.
    Each layer is then replaced by its ``QuantizedLinear`` (also in ``layers``).
    """
    t0 = time.perf_counter()
    Ws = [get_weight(layers[n]).float() for n in names]
    for n, W in zip(names, Ws, strict=True):
        require(bool(torch.isfinite(W).all()), f"layer {prefix + n}: weight holds NaN or Inf")
    require(
        bool(torch.isfinite(H).all()),
        f"layer {prefix + names[0]}: calibration activations hold NaN or Inf (Hessian is not finite)",
    )
    splits = [W.shape[0] for W in Ws]
    res = gptq_quantize(torch.cat(Ws), H, cfg.spec, cfg.block_size, cfg.damp, cfg.act_order, row_splits=splits)
    seconds = time.perf_counter() - t0
    stats = {}
    for n, W, qw in zip(names, Ws, split_rows(res.qweight, splits), strict=True):
        layers[n] = to_quantized_linear(model, prefix + n, qw)
        Q = qw.dequantize()
        D = W - Q
        out_err = (D @ H * D).sum() / (W @ H * W).sum().clamp_min(1e-30)
        stats[prefix + n] = {
            **weight_stats(W, Q, seconds * W.shape[0] / sum(splits)),
            "damp": res.damp,
            "output_rel_err": float(out_err),
        }
    return stats


@register("gptq")
@torch.no_grad()
def gptq_model(model: nn.Module, cfg: PTQConfig, calib: Tensor | None, progress: bool = False) -> dict:
    """GPTQ-quantize ``model`` in place, block by block, on ``calib`` token windows ``[n, T]``."""
    calib = require_calib(calib, "GPTQ")
    was_training = model.training
    model.eval()
    targets = quantizable(model, cfg.skip)
    blocks_name, blocks = find_blocks(model)
    inputs = capture_block_inputs(model, blocks[0], calib, progress)
    stats = {}
    for b, block in track(list(enumerate(blocks)), description="GPTQ blocks", disable=not progress, transient=True):
        prefix = f"{blocks_name}.{b}."
        layers = {n[len(prefix) :]: m for n, m in targets.items() if n.startswith(prefix)}

        def run_inputs(block=block, inputs=inputs):
            for inp in inputs:
                try:
                    run_block(block, inp)
                except _Stop:
                    pass

        for stage in _stages(block, inputs[0], layers):
            first = stage[0]  # the stage's layers all read this layer's input
            H = _hessians({first: layers[first]}, run_inputs, stop_after=first)[first]
            stats.update(_gptq_layers(model, stage, prefix, layers, H, cfg))
        inputs = [inp.with_hidden(run_block(block, inp)) for inp in inputs]

    heads = {n: m for n, m in targets.items() if not n.startswith(blocks_name + ".")}
    if heads:
        device = next(model.parameters()).device

        def run_model():
            for ids in calib.split(CALIB_BATCH):
                model(input_ids=ids.to(device), use_cache=False)

        Hs = _hessians(heads, run_model, stop_after=None)
        for n in list(heads):
            stats.update(_gptq_layers(model, [n], "", heads, Hs[n], cfg))
    model.train(was_training)
    return stats
