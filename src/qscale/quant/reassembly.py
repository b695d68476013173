"""Channel reassembly of a linear layer's input (QLLM, Liu et al. 2023, arXiv 2310.08041, §3.1).

A reassembly maps the layer input ``x [..., n_in]`` to ``x' [..., width]`` through ``E`` entries
``(src_e, dst_e, coef_e)``: ``x'_j = Σ_{e: dst_e = j} coef_e · x_{src_e}``, and the weight ``W [out, n_in]`` to
``W'_{:, j} = Σ_{e: dst_e = j} W_{:, src_e}``. Channel disassembly splits an outlier channel ``c`` into ``T``
entries with ``coef = 1/T`` (each sub-channel ``x_c/T`` reads a copy of ``W_c``: exact); channel assembly puts
two entries ``a, b`` in one slot with ``coef = 1/2`` (``x'_j = (x_a + x_b)/2``, ``W'_j = W_a + W_b``, the
paper's approximation ``x_a W_a + x_b W_b ≈ (x_a + x_b)/2 · (W_a + W_b)``, off by ``(x_a − x_b)(W_a − W_b)/2``).
These three index tensors are what a reassembled ``QuantizedLinear`` stores besides its packed weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qscale.errors import require


def reassemble(x: Tensor, src: Tensor, dst: Tensor, coef: Tensor, width: int) -> Tensor:
    """``x'_j = Σ_{e: dst_e = j} coef_e · x_{src_e}``: ``[..., n_in]`` → ``[..., width]``."""
    parts = x[..., src.long()] * coef.to(x.dtype)
    return x.new_zeros(*x.shape[:-1], width).index_add_(-1, dst.long(), parts)


@dataclass
class ChannelReassembly:
    """Entries ``src`` (input channel), ``dst`` (reassembled channel), ``coef`` of ``x' = M(x)``; ``width`` of
    ``x'``."""

    src: Tensor
    dst: Tensor
    coef: Tensor
    width: int

    def __post_init__(self) -> None:
        n = self.src.shape
        require(
            self.src.ndim == 1 and self.dst.shape == n and self.coef.shape == n,
            "reassembly src/dst/coef must be 1-D tensors of one length",
        )
        require(
            not self.src.is_floating_point() and not self.dst.is_floating_point(),
            "reassembly src/dst must be integer tensors",
        )
        require(
            int(self.dst.min()) >= 0 and int(self.dst.max()) < self.width and int(self.src.min()) >= 0,
            "reassembly indices out of range",
        )
        require(bool(torch.isfinite(self.coef).all()), "reassembly coefficients hold NaN or Inf")

    def apply(self, x: Tensor) -> Tensor:
        """``x' [..., width]`` from ``x [..., n_in]``."""
        return reassemble(x, self.src, self.dst, self.coef, self.width)

    def weight(self, w: Tensor) -> Tensor:
        """``W' [out, width]`` from ``W [out, n_in]``."""
        return w.new_zeros(w.shape[0], self.width).index_add_(1, self.dst.long(), w[:, self.src.long()])
