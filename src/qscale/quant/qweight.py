"""``QuantizedWeight``: the integer form of one weight matrix, made by RTN, GPTQ and QAT ``convert`` alike.

Every exporter reads this type and nothing else. The weight ``[out, in]`` is
``w[:, i] = (codes[:, i] − zero[:, g_idx[i]]) · scale[:, g_idx[i]]`` (the GPTQ checkpoint convention),
with codes signed (``[−2^(b−1), 2^(b−1) − 1]``) for a symmetric spec and unsigned (``[0, 2^b − 1]``)
for an asymmetric one; ``scale``/``zero`` are ``[out, n_groups]``. Granularity "group" has
``g_idx = i // G`` (groups are always contiguous runs of input columns, also with GPTQ act-order: static
groups); "channel" and "tensor" have one group (a tensor scale is repeated on every row).

Layouts: "uniform" (the above; also BitNet's ternary codes, a 2-bit symmetric uniform layout with one
scale, and QuEST's half-integer zero point) and "partial-binary" (PB-LLM: where ``extras["mask"]`` the
codes are 8-bit symmetric with ``scale``, elsewhere ±1 times ``extras["alpha"]`` ``[out, 1]``) and
"complex-phase" (iFairy/Fairy2i: 2-bit codes of {±1, ±i} of a widely-linear complex map, ``extras["phase_scale"]``;
``scale``/``zero`` unused (ones/zeros), see ``qscale.quant.phase``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from qscale.errors import require
from qscale.quant.core import QTensor
from qscale.quant.phase import dequantize_layout
from qscale.quant.spec import QuantSpec

LAYOUTS = ("uniform", "partial-binary", "complex-phase")


def default_g_idx(in_features: int, spec: QuantSpec, device: torch.device | str = "cpu") -> Tensor:
    """Group of each input column: ``i // G`` for "group", 0 otherwise (int32 ``[in]``)."""
    idx = torch.arange(in_features, device=device)
    return (idx // spec.G if spec.granularity == "group" else torch.zeros_like(idx)).to(torch.int32)


@dataclass
class QuantizedWeight:
    """Integer codes ``[out, in]``, per-group ``scale``/``zero`` ``[out, n_groups]``, ``g_idx`` ``[in]``."""

    codes: Tensor
    scale: Tensor
    zero: Tensor
    g_idx: Tensor
    spec: QuantSpec
    layout: str = "uniform"
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.layout in LAYOUTS, f"unknown weight layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        require(
            self.codes.ndim == 2 and not self.codes.is_floating_point(),
            f"codes must be a 2-D integer tensor, got {tuple(self.codes.shape)} {self.codes.dtype}",
        )
        out, n_in = self.codes.shape
        require(
            self.scale.ndim == 2 and self.scale.shape[0] == out and self.zero.shape == self.scale.shape,
            f"scale/zero must be [out={out}, n_groups], got {tuple(self.scale.shape)} / {tuple(self.zero.shape)}",
        )
        require(self.g_idx.shape == (n_in,), f"g_idx must have {n_in} entries, got {tuple(self.g_idx.shape)}")
        require(
            bool(torch.isfinite(self.scale).all()) and bool(torch.isfinite(self.zero).all()),
            "quantized weight has non-finite scales or zero points",
        )

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @classmethod
    def from_qtensor(cls, qt: QTensor) -> QuantizedWeight:
        """From the core quantizer's output for a weight ``[out, in]`` (granularity tensor/channel/group)."""
        spec = qt.spec
        require(spec.granularity != "token", "a weight is not quantized per token")
        out, n_in = qt.shape
        scale = qt.scale.reshape(-1, qt.scale.shape[-2]) if spec.granularity == "group" else qt.scale.reshape(-1, 1)
        zero = qt.zero.reshape(scale.shape)
        if spec.granularity == "tensor":
            scale, zero = scale.expand(out, 1).contiguous(), zero.expand(out, 1).contiguous()
        return cls(qt.codes, scale, zero, default_g_idx(n_in, spec, qt.codes.device), spec)

    def dequantize(self) -> Tensor:
        """The float32 weight ``[out, in]`` (float64 if the scale is)."""
        dtype = torch.promote_types(self.scale.dtype, torch.float32)
        g = self.g_idx.long()
        q = self.codes.to(dtype)
        if self.layout == "complex-phase":
            return dequantize_layout(self.codes, self.extras["phase_scale"]).to(dtype)
        if self.layout == "partial-binary":
            salient = (q - self.zero.to(dtype)[:, g]) * self.scale.to(dtype)[:, g]
            return torch.where(self.extras["mask"], salient, q * self.extras["alpha"].to(dtype))
        return (q - self.zero.to(dtype)[:, g]) * self.scale.to(dtype)[:, g]

    @property
    def integer_zero(self) -> bool:
        """Whether every zero point is an integer (what compressed-tensors and GPTQ can store)."""
        return bool(torch.equal(self.zero, torch.round(self.zero)))

    @property
    def contiguous_groups(self) -> bool:
        """Whether ``g_idx`` is the default ``i // G`` (no act-order permutation of groups)."""
        return bool(torch.equal(self.g_idx, default_g_idx(self.codes.shape[1], self.spec, self.g_idx.device)))
