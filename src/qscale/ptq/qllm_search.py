"""QLLM's adaptive channel reassembly search (Liu et al. 2023, arXiv 2310.08041, §3.1 and Eq. 4), as the authors'
code does it (github:ModelTC/QLLM, ``reassembly/cr_module.py`` ``CRModule``, ``assembly/ca_module.py``).

One reassembly serves every linear layer reading the same input (their weights ``W`` stacked by rows). With the
channels' absolute maxima ``m_c`` over the calibration rows and a threshold θ, channel disassembly splits
channel ``c`` into ``T_c = max(1, ⌈m_c/θ⌉)`` copies of ``x_c/T_c`` (each reading ``W_c``), and channel assembly
merges as many channels as were added, so the width stays ``C``:

- Matching (``bipartite_soft_matching_x_w``): the channels alternate between A (even positions) and B (odd);
  the cost of merging ``a`` into ``b`` is ``(‖x_a − x_b‖₂ · (Σ_o W_oa + Σ_o W_ob))²`` over the calibration rows
  (the authors' loop fills the A-term for the first ``|B|`` rows of A only; kept). Split channels cost the
  float maximum. Each ``a`` picks its cheapest ``b``; the ``r`` cheapest ``a`` are merged (several may share
  one ``b``), ``x' = mean`` of the merged channels and ``W' = Σ`` of their columns.
- θ search (``find_threshold``): θ runs down from ``max m`` in ``max(100, ⌊max m / 0.5⌋)`` linear steps of
  ``(max m − min m)/steps`` and stops once more than ``⌊channel_ratio·C⌋`` channels would be added
  (channel_ratio = 0.1, the authors' default); each new count of added channels is scored (first merged on
  the original channels, then split) by the caller's quantized-output error, and the θ of least error is kept.
  As in the authors' code the unreassembled layer (0 added channels) is not scored: the first scored
  candidate always beats the initial record, so a reassembly is used whenever one fits the cap.
- The kept θ is then applied the other way round (``output_reassembly``): split first, then matched and merged
  on the split channels (the split copies cost the maximum).

Both orders are returned as a ``qscale.quant.reassembly.ChannelReassembly`` with the authors' channel order.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from qscale.quant.reassembly import ChannelReassembly

CHANNEL_RATIO = 0.1  # the authors' --channel_ratio default: at most ⌊0.1·C⌋ added channels
MIN_STEPS = 100  # the θ search's least number of linear steps


def merge_scores(x: Tensor, w: Tensor) -> Tensor:
    """``[|A|, |B|]`` merge costs of ``x [rows, C]`` (float32) with the stacked weight ``w [out, C]``."""
    xa, xb = x[:, 0::2], x[:, 1::2]
    xdist = torch.cdist(xa.t().contiguous(), xb.t().contiguous(), p=2.0)
    wa, wb = w[:, 0::2].sum(0), w[:, 1::2].sum(0)
    sa = torch.zeros_like(xdist)
    nb = xb.shape[1]
    sa[:nb] = wa[:nb, None] * xdist[:nb]  # the authors fill rows i < |B| only (``for i in range(xb_c)``)
    return (sa + wb[None, :] * xdist) ** 2


def match(scores: Tensor, blocked: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """The ``r`` merges (A index, B index) of least cost; ``blocked [C]``: channels that must not merge."""
    scores = scores.clone()
    big = torch.finfo(scores.dtype).max
    scores[blocked[0::2]] = big
    scores[:, blocked[1::2]] = big
    node_min, node_idx = scores.min(dim=-1)
    src = node_min.argsort(dim=-1)[:r]
    return src, node_idx[src]


def _merge_slots(n: int, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """For ``n`` channels and merges (A index ``src`` into B index ``dst``): each channel's output slot (the
    unmerged channels in order; a merged A channel joins its B channel) and each slot's member count."""
    removed = torch.zeros(n, dtype=torch.bool)
    removed[2 * src] = True
    keep_rank = torch.cumsum(~removed, 0) - 1
    slot = keep_rank.clone()
    slot[2 * src] = keep_rank[2 * dst + 1]
    size = torch.bincount(slot, minlength=int((~removed).sum()))
    return slot, size


def merged_then_split(splits: Tensor, src: Tensor, dst: Tensor, device: torch.device) -> ChannelReassembly:
    """Merge first (on the original channels), then split each slot ``T`` ways: the θ search's order
    (``assemble_x`` then ``disassemble_x``; a slot's ``T`` and factor are its members' means)."""
    n = splits.numel()
    slot, size = _merge_slots(n, src.cpu(), dst.cpu())
    t = splits.double().cpu()
    t_slot = torch.zeros(len(size), dtype=torch.double).index_add_(0, slot, t) / size
    f_slot = torch.zeros(len(size), dtype=torch.double).index_add_(0, slot, 1 / t) / size
    copies = t_slot.long()  # the authors' ``.int()``
    base = torch.cumsum(copies, 0) - copies
    e_src, e_dst, e_coef = [], [], []
    for c in range(n):
        j = int(slot[c])
        for k in range(int(copies[j])):
            e_src.append(c)
            e_dst.append(int(base[j]) + k)
            e_coef.append(float(f_slot[j] / size[j]))
    return ChannelReassembly(
        torch.tensor(e_src, device=device),
        torch.tensor(e_dst, device=device),
        torch.tensor(e_coef, dtype=torch.float32, device=device),
        int(copies.sum()),
    )


def split_then_merged(splits: Tensor, x: Tensor, w: Tensor) -> ChannelReassembly:
    """Split first, then match and merge on the split channels of ``x [rows, C]``, ``w [out, C]``: the order
    the kept θ is applied in (``output_reassembly``)."""
    t = splits.long().cpu()
    orig = torch.repeat_interleave(torch.arange(splits.numel()), t)
    factor = (1.0 / splits.float().cpu())[orig]
    dev = x.device
    xd = x[:, orig.to(dev)] * factor.to(dev)
    wd = w[:, orig.to(dev)]
    r = min(int(t.sum()) - splits.numel(), orig.numel() // 2)
    src, dst = match(merge_scores(xd, wd), (factor != 1.0).to(dev), r)
    slot, size = _merge_slots(orig.numel(), src.cpu(), dst.cpu())
    coef = factor.double() / size[slot].double()
    return ChannelReassembly(orig.to(dev), slot.to(dev), coef.float().to(dev), len(size))


def search_threshold(
    x: Tensor, w: Tensor, absmax: Tensor, score: Callable[[ChannelReassembly], float], ratio: float = CHANNEL_RATIO
) -> tuple[float, int, float]:
    """θ of least ``score`` (the caller's quantized-output MSE of a reassembly), its added channels and error.

    ``x [rows, C]`` float32 rows for the matching, ``w [out, C]`` the stacked weights, ``absmax [C]`` over all
    calibration rows (float32). Returns ``(max m, 0, inf)`` when no reassembly fits the cap."""
    n = absmax.numel()
    top, low = float(absmax.max()), float(absmax.min())
    steps = max(MIN_STEPS, int(top / 0.5))
    step = (top - low) / steps
    cap = int(n * ratio)
    scores = merge_scores(x, w)
    th, prev, cnt = top, 0, 0
    best = (top, 0, math.inf)
    while th >= low and cnt < steps:
        splits = torch.clamp(torch.ceil(absmax / th), min=1.0)
        extra = int(splits.int().sum()) - n
        if extra > cap:
            break
        if extra != prev:
            src, dst = match(scores, splits > 1, extra)
            err = score(merged_then_split(splits, src, dst, x.device))
            if err < best[2]:
                best = (th, extra, err)
            prev = extra
        cnt += 1
        th -= step
    return best


def stage_reassembly(
    x: Tensor, w: Tensor, absmax: Tensor, score: Callable[[ChannelReassembly], float], ratio: float = CHANNEL_RATIO
) -> tuple[ChannelReassembly | None, dict]:
    """The reassembly QLLM keeps for one shared input (None: none fits the cap) and its search stats."""
    th, extra, err = search_threshold(x, w, absmax, score, ratio)
    splits = torch.clamp(torch.ceil(absmax / th), min=1.0)
    stats = {"theta": th, "extra_channels": extra, "search_mse": err}
    if not bool((absmax > th).any()):
        return None, {**stats, "extra_channels": 0}
    return split_then_merged(splits, x, w), stats
