"""The one bit packer of every packed layout: a dense little-endian bitstream in blocks of 32 values (SPEC §6).

A row of ``n`` unsigned ``b``-bit values is cut into blocks of 32 (the last one padded with zeros); block
``k`` occupies ``b`` consecutive int32 words and value ``i`` of the block sits at bits ``i·b … i·b + b − 1``
of those words taken as one little-endian ``32·b``-bit integer, so for 3, 5, 6 and 7 bits some values
straddle two words. The row is truncated to ``ceil(n·b/32)`` words. compressed-tensors packs its
``weight_packed`` this way along the input dimension of ``[out, in]``; GPTQ's ``qweight`` is the same words
along the input dimension of ``[in, out]`` (the transpose), and its ``qzeros`` along the output dimension.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qscale.errors import QscaleError, require

_MASK32 = (1 << 32) - 1


def packed_words(n: int, bits: int) -> int:
    """Number of int32 words a row of ``n`` ``bits``-bit values packs into."""
    return math.ceil(n * bits / 32)


def _check_bits(bits: int) -> None:
    require(isinstance(bits, int) and 1 <= bits <= 8, f"can only pack 1..8-bit values, got {bits!r}")


def _positions(bits: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Word index and bit offset of each of the 32 values of a block."""
    starts = torch.arange(32, device=device, dtype=torch.int64) * bits
    return starts // 32, starts % 32


def pack_rows(values: Tensor, bits: int) -> Tensor:
    """Pack ``values`` ``[rows, n]`` (integers in ``[0, 2^bits)``) along dim 1 into int32 ``[rows, words]``."""
    _check_bits(bits)
    require(values.ndim == 2, f"pack_rows needs a 2-D tensor, got shape {tuple(values.shape)}")
    require(not values.is_floating_point(), f"pack_rows needs integer values, got {values.dtype}")
    v = values.to(torch.int64)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 1 << bits):
        raise QscaleError(
            f"values to pack must lie in [0, {(1 << bits) - 1}] for {bits} bits, got [{int(v.min())}, {int(v.max())}]"
        )
    rows, n = v.shape
    if 32 % bits == 0:  # no value straddles a word: each word is 32/b values side by side
        per = 32 // bits
        shifts = torch.arange(per, device=v.device, dtype=torch.int64) * bits
        out = (torch.nn.functional.pad(v, (0, -n % per)).reshape(rows, -1, per) << shifts).sum(-1)
        return torch.where(out >= 1 << 31, out - (1 << 32), out).to(torch.int32)
    blocks = torch.nn.functional.pad(v, (0, -n % 32)).reshape(rows, -1, 32)
    word, offset = _positions(bits, v.device)
    shifted = blocks << offset  # up to 39 bits: the part above bit 32 spills into the next word
    words = torch.zeros(rows, blocks.shape[1], bits + 1, dtype=torch.int64, device=v.device)
    index = word.expand_as(shifted)
    words.scatter_add_(2, index, shifted & _MASK32)  # value ranges never overlap: adding is or-ing
    words.scatter_add_(2, index + 1, shifted >> 32)
    out = words[:, :, :bits].reshape(rows, -1)[:, : packed_words(n, bits)]
    return torch.where(out >= 1 << 31, out - (1 << 32), out).to(torch.int32)


def unpack_rows(words: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of :func:`pack_rows`: int32 ``[rows, ceil(n·bits/32)]`` → int32 values ``[rows, n]``."""
    _check_bits(bits)
    require(words.dtype == torch.int32, f"packed words must be int32, got {words.dtype}")
    require(words.ndim == 2, f"packed words must be 2-D, got shape {tuple(words.shape)}")
    require(
        words.shape[1] == packed_words(n, bits),
        f"{n} values of {bits} bits need {packed_words(n, bits)} words per row, got {words.shape[1]}",
    )
    rows = words.shape[0]
    if 32 % bits == 0:
        shifts = torch.arange(32 // bits, device=words.device, dtype=torch.int32) * bits
        out = (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # arithmetic shift: the mask drops the sign
        return out.reshape(rows, -1)[:, :n].contiguous()
    w = torch.nn.functional.pad(words.to(torch.int64) & _MASK32, (0, -words.shape[1] % bits))
    blocks = torch.nn.functional.pad(w.reshape(rows, -1, bits), (0, 1))  # a spare zero word per block
    word, offset = _positions(bits, words.device)
    index = word.expand(rows, blocks.shape[1], 32)
    lo = blocks.gather(2, index) >> offset
    hi = blocks.gather(2, index + 1) << (32 - offset)  # the straddling part; beyond the mask otherwise
    out = (lo | hi) & ((1 << bits) - 1)
    return out.reshape(rows, -1)[:, :n].to(torch.int32)
