"""GPTQ applied block by block to any HF causal LM (Frantar et al. 2022, §4 and "true-sequential").

The inputs of the first decoder block (hidden states plus keyword arguments such as the attention
mask, position ids or rotary embeddings) are captured once with a hook. Then, for each block, its
linear layers are quantized in stages of layers that read the same tensor (q/k/v, then o, then gate/up,
then down); the layers of a stage share one Hessian and are quantized together as one stacked matrix.
``PTQConfig.gptq_order`` says what each stage's Hessian is collected on:

- "sequential" (default, the authors' true-sequential): the block with the earlier stages already quantized.
  Each stage's pass starts from what the pass before left (``qscale.ptq.replay``: attention and MLP outputs
  that did not change are reused, a changed o_proj or down_proj is applied to its kept input), so a block
  costs about one forward pass over the calibration rows, not one per stage;
- "block" (llm-compressor's): one pass over the unquantized block for every stage's Hessian.

Quantized layers keep their dequantized weight while their block is calibrated (``QuantizedLinear.hold``).
The block's outputs, recomputed with quantized weights, are the next block's inputs. Linear layers outside
the blocks that are not skipped (e.g. an LM head) are calibrated last on the quantized model. Each quantized
layer is replaced by its ``QuantizedLinear`` (integer codes kept, packed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial

import torch
from rich.progress import track
from torch import Tensor, nn

from qscale.errors import QscaleError, require
from qscale.ptq.block_io import CALIB_BATCH, BlockInput, Stop, capture_block_inputs, release_freed_memory, run_block
from qscale.ptq.config import PTQConfig
from qscale.ptq.gptq import gptq_quantize, split_rows
from qscale.ptq.layers import find_blocks, get_weight, quantizable, to_quantized_linear
from qscale.ptq.registry import register
from qscale.ptq.replay import BlockReplay, Trace, trace_block
from qscale.ptq.rtn import weight_stats
from qscale.quant import QuantizedLinear

CHUNK_ROWS = 256  # tokens per calibration forward (whole windows, at least one): a batch is held a chunk at a time

__all__ = ["CALIB_BATCH", "BlockInput", "block_layers", "capture_block_inputs", "gptq_model", "run_block"]


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
            raise Stop

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


def _gptq_block(
    model: nn.Module,
    block: nn.Module,
    prefix: str,
    layers: dict[str, nn.Module],
    inputs: list[BlockInput],
    trace: Trace,
    cfg: PTQConfig,
) -> dict:
    """Quantize one block's ``layers`` stage by stage and replace ``inputs`` by the block's outputs; its stats."""
    replay = BlockReplay(block, inputs, trace)
    stats: dict = {}
    with ExitStack() as held:
        if cfg.gptq_order == "block":
            H = replay.hessians([stage[0] for stage in trace.stages], stop=False, keep=False)
        for stage in trace.stages:
            if cfg.gptq_order == "sequential":
                H = replay.hessians([stage[0]], stop=True, keep=True)
            stats.update(_gptq_layers(model, list(stage), prefix, layers, H.pop(stage[0]), cfg))
            release_freed_memory()
            for n in stage:
                layer = layers[n]
                assert isinstance(layer, QuantizedLinear)  # made by _gptq_layers
                held.enter_context(layer.hold())
            replay.mark_quantized(list(stage))
        replay.advance()
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
    inputs = capture_block_inputs(model, blocks[0], calib, progress, chunk_rows=CHUNK_ROWS)
    traces: dict[tuple, Trace] = {}  # blocks of one class with the same selected layers are called alike
    stats = {}
    for b, block in track(list(enumerate(blocks)), description="GPTQ blocks", disable=not progress, transient=True):
        prefix = f"{blocks_name}.{b}."
        # taken out of ``targets``: a full-precision layer is freed once its QuantizedLinear replaces it
        layers = {n[len(prefix) :]: targets.pop(n) for n in [n for n in targets if n.startswith(prefix)]}
        key = (type(block), tuple(layers))
        if key not in traces:
            traces[key] = trace_block(block, inputs[0], layers)
        stats.update(_gptq_block(model, block, prefix, layers, inputs, traces[key], cfg))

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
