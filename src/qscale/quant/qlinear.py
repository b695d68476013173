"""``QuantizedLinear``: the one quantized-linear module, made by RTN, GPTQ, QAT ``convert`` and ``load_quantized``.

It keeps the weight packed in memory (``weight_packed``: the unsigned codes ``q − qmin`` in the dense
bitstream of ``qscale.quant.packing``, byte for byte compressed-tensors' ``weight_packed``) with
``weight_scale``, ``weight_zero``, ``weight_g_idx`` and any layout extras (``weight_<name>``), and
dequantizes on the fly in ``forward``. A QAT-converted layer may also carry its activation quantizer and
the Hadamard rotation of its inputs (QuEST): ``y = a_q(x H) · Ŵᵀ + b`` with ``Ŵ`` the rotated weight; a QLLM
layer carries the channel reassembly of its inputs (``input_src``/``input_dst``/``input_coef``,
``qscale.quant.reassembly``): ``y = a_q(M(x)) · Ŵ'ᵀ + b``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qscale.errors import QscaleError
from qscale.quant.hadamard import hadamard_transform
from qscale.quant.packing import pack_rows, unpack_rows
from qscale.quant.qweight import QuantizedWeight
from qscale.quant.reassembly import ChannelReassembly, reassemble
from qscale.quant.spec import QuantSpec


class QuantizedLinear(nn.Module):
    """Packed integer weight + scales, dequantized per forward; drop-in for ``nn.Linear`` (and GPT-2's Conv1D)."""

    # buffers registered in __init__ (``input_*`` only with a channel reassembly)
    weight_packed: Tensor
    weight_scale: Tensor
    weight_zero: Tensor
    weight_g_idx: Tensor
    input_src: Tensor
    input_dst: Tensor
    input_coef: Tensor

    def __init__(
        self,
        qweight: QuantizedWeight,
        bias: Tensor | None = None,
        act_quantizer: nn.Module | None = None,
        hadamard_group: int = 0,
        name: str = "",
        source: str = "Linear",
        reassembly: ChannelReassembly | None = None,
    ):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        if reassembly is not None:
            if hadamard_group or reassembly.width != self.in_features:
                raise QscaleError(
                    f"layer {name or '?'}: a channel reassembly of width {reassembly.width} does not "
                    f"fit {self.in_features} weight columns{' with a rotation' if hadamard_group else ''}"
                )
            self.register_buffer("input_src", reassembly.src.to(torch.int32).clone())
            self.register_buffer("input_dst", reassembly.dst.to(torch.int32).clone())
            self.register_buffer("input_coef", reassembly.coef.float().clone())
        self.reassembled = reassembly is not None
        self.spec: QuantSpec = qweight.spec
        self.layout = qweight.layout
        self.name = name
        self.source = source  # class the layer replaced ("Conv1D": GPT-2, whose weight file layout is [in, out])
        self.hadamard_group = hadamard_group
        self.act_quantizer = act_quantizer
        self.extra_names = tuple(qweight.extras)
        unsigned = qweight.codes.to(torch.int32) - self.spec.qmin
        self.register_buffer("weight_packed", pack_rows(unsigned, self.spec.bits))
        self.register_buffer("weight_scale", qweight.scale.detach().clone())
        self.register_buffer("weight_zero", qweight.zero.detach().clone())
        self.register_buffer("weight_g_idx", qweight.g_idx.to(torch.int32).clone())
        for key, value in qweight.extras.items():
            self.register_buffer(f"weight_{key}", value.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def qweight(self) -> QuantizedWeight:
        """The integer form back (codes unpacked from ``weight_packed``)."""
        codes = unpack_rows(self.weight_packed, self.spec.bits, self.in_features) + self.spec.qmin
        codes = codes.to(torch.int8 if self.spec.symmetric else torch.uint8)
        extras = {k: getattr(self, f"weight_{k}") for k in self.extra_names}
        return QuantizedWeight(
            codes, self.weight_scale, self.weight_zero, self.weight_g_idx, self.spec, self.layout, extras
        )

    def reassembly(self) -> ChannelReassembly | None:
        """The channel reassembly of the inputs (QLLM), or None."""
        if not self.reassembled:
            return None
        return ChannelReassembly(self.input_src, self.input_dst, self.input_coef, self.in_features)

    def dequantized_weight(self) -> Tensor:
        """The weight ``[out, in]`` the matmul uses (in the rotated basis when ``hadamard_group``)."""
        return self.qweight().dequantize()

    def forward(self, x: Tensor) -> Tensor:
        if self.hadamard_group:
            x = hadamard_transform(x, self.hadamard_group)
        if self.reassembled:
            x = reassemble(x, self.input_src, self.input_dst, self.input_coef, self.in_features)
        if self.act_quantizer is not None:
            try:
                x = self.act_quantizer(x)
            except QscaleError as e:
                raise QscaleError(f"layer {self.name or '?'}: input activations: {e}") from None
        return F.linear(x, self.dequantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def weight_nbytes(self) -> int:
        """Bytes of the packed weight and its parameters (what the layer costs in memory)."""
        return sum(
            t.numel() * t.element_size() for n, t in self.named_buffers(recurse=False) if n.startswith("weight_")
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"{self.spec.label}, layout={self.layout}, hadamard_group={self.hadamard_group}"
            f"{', reassembled' if self.reassembled else ''}"
        )
