"""Edge export: an ONNX graph whose quantized weights are integer initializers behind DequantizeLinear (QDQ).

The model is traced with ``torch.onnx.export`` (opset 21) with each ``QuantizedLinear`` standing in as a plain
linear layer; every such weight initializer is then replaced by its integer codes — int4/uint4 for up to 4 bits
(opset 21's 4-bit types), int8/uint8 otherwise — its scales and zero points, and a ``DequantizeLinear`` node.
The traced graph reads a linear weight ``[out, in]`` through ``Transpose`` into ``MatMul``; the exporter drops
that ``Transpose`` and stores the codes as ``[in, out]``, the matrix ``MatMul`` consumes, dequantized blocked
per group of G input rows (``axis = 0``, ``block_size = G``) or per output column (``axis = 1``). That
``DequantizeLinear → MatMul`` pair is what ONNX Runtime's QDQ optimizer fuses into its ``MatMulNBits`` kernel
(com.microsoft), which keeps the weight packed (1.32: every width 2–8 bits, groups and per-channel; blocks must
be a power of two ≥ 16). A weight read any other way keeps the ``[out, in]`` layout (``axis = 1`` blocks /
``axis = 0`` channels), which ONNX Runtime runs by dequantizing the weight to fp32 on every call.

TensorRT's Dequantize layer takes only zero points of 0 (symmetric exports; asymmetric ones carry the
zero points of the unsigned codes) and block scales only for INT4 (NVIDIA, TensorRT Operators: Dequantize).
Weight-only: activation quantizers (dynamic per token), PB-LLM's layout, QuEST's rotation and half-integer
zeros have no QDQ form here.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from qscale.errors import QscaleError, require
from qscale.export.folder import quantized_layers, weight_only_problem
from qscale.quant import QuantizedLinear

OPSET = 21


class _Logits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False).logits


def _check(name: str, layer: QuantizedLinear) -> None:
    why = weight_only_problem(layer)
    if why is None and layer.spec.granularity == "group" and layer.in_features % layer.spec.G:
        why = f"its {layer.in_features} input columns are not a multiple of the group size {layer.spec.group_size}"
    if why is None and not layer.qweight().contiguous_groups:
        why = "its groups are not contiguous"
    if why:
        raise QscaleError(f"cannot export layer {name} to ONNX QDQ: {why}")


def _float_view(model: nn.Module) -> nn.Module:
    """A copy whose quantized layers are ``nn.Linear`` with the dequantized weight (traced, then replaced)."""
    view = copy.deepcopy(model)
    for name, layer in quantized_layers(view).items():
        lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(layer.dequantized_weight())
            if layer.bias is not None:
                lin.bias.copy_(layer.bias)
        parent, _, child = name.rpartition(".")
        setattr(view.get_submodule(parent) if parent else view, child, lin)
    return view.float().eval()


def _qdq(onnx, name: str, out: str, layer: QuantizedLinear, transposed: bool) -> tuple[list, object]:
    """Initializers (codes, scale, zero) named after ``name`` and the DequantizeLinear node producing ``out``:
    the weight as ``[in, out]`` (``transposed``: what MatMul consumes, fused by ONNX Runtime) or ``[out, in]``."""
    helper, TP = onnx.helper, onnx.TensorProto
    qw = layer.qweight()
    spec = qw.spec
    small = spec.bits <= 4
    elem = (TP.INT4 if small else TP.INT8) if spec.symmetric else (TP.UINT4 if small else TP.UINT8)
    codes, scale, zero = qw.codes, qw.scale, qw.zero  # [out, in], [out, n_groups]
    if spec.symmetric:
        zero = torch.zeros_like(scale)
    group = spec.granularity == "group"
    if transposed:
        codes, scale, zero = codes.T, scale.T, zero.T  # [in, out], [n_groups, out]
        attrs = {"axis": 0, "block_size": spec.G} if group else {"axis": 1}
    else:
        attrs = {"axis": 1, "block_size": spec.G} if group else {"axis": 0}
    if not group:
        scale, zero = scale.reshape(-1), zero.reshape(-1)  # one per output channel

    def tensor(suffix, dtype, t):
        a = t.contiguous().numpy()
        return helper.make_tensor(f"{name}_{suffix}", dtype, a.shape, a.flatten().tolist())

    inits = [
        tensor("q", elem, codes.to(torch.int32)),
        tensor("scale", TP.FLOAT, scale.float()),
        tensor("zero", elem, zero.round().to(torch.int32)),
    ]
    node = helper.make_node(
        "DequantizeLinear",
        [f"{name}_q", f"{name}_scale", f"{name}_zero"],
        [out],
        name=f"{name}_DequantizeLinear",
        **attrs,
    )
    return inits, node


def _only_transpose(graph, key: str):
    """The single ``Transpose(perm = [1, 0])`` that reads initializer ``key``, or None if it is read otherwise."""
    readers = [n for n in graph.node if key in n.input]
    if len(readers) != 1 or readers[0].op_type != "Transpose":
        return None
    perm = [list(a.ints) for a in readers[0].attribute if a.name == "perm"]
    return readers[0] if perm in ([], [[1, 0]]) else None


def trace_onnx(model: nn.Module, seq_len: int = 16):
    """The float ONNX graph ``input_ids → logits`` (batch and sequence dynamic) of ``model``, its quantized
    layers as plain linear layers with the dequantized weight: what :func:`export_onnx` rewrites (and, of an
    unquantized model, the fp32 baseline)."""
    ids = torch.zeros(2, seq_len, dtype=torch.long)  # sizes of 1 would be specialised by torch.export
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", min=2)},)
    try:
        program = torch.onnx.export(
            _Logits(_float_view(model)),
            (ids,),
            dynamo=True,
            optimize=False,
            opset_version=OPSET,
            dynamic_shapes=dims,
            input_names=["input_ids"],
            output_names=["logits"],
            verbose=False,
        )
    except Exception as e:
        raise QscaleError(f"ONNX tracing failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    assert program is not None  # torch.onnx.export(dynamo=True) returns the program
    return program.model_proto


def export_onnx(model: nn.Module, path: str | Path, seq_len: int = 16) -> Path:
    """Write ``model`` (with ``QuantizedLinear`` layers) as an ONNX QDQ graph ``input_ids → logits``."""
    try:
        import onnx
    except ImportError:
        raise QscaleError("ONNX export needs the onnx extra: pip install 'qscale[onnx]'") from None
    layers = quantized_layers(model)
    require(bool(layers), "the model has no quantized linear layers: quantize it (qscale quantize) or convert it first")
    for name, layer in layers.items():
        _check(name, layer)
    proto = trace_onnx(model, seq_len)
    graph = proto.graph
    by_name = {init.name: init for init in graph.initializer}
    new_nodes = []
    for name, layer in layers.items():
        key = f"model.{name}.weight"
        require(key in by_name, f"ONNX graph has no initializer {key} for layer {name}")
        graph.initializer.remove(by_name[key])
        transpose = _only_transpose(graph, key)
        if transpose is not None:
            graph.node.remove(transpose)
        out = transpose.output[0] if transpose is not None else key
        inits, node = _qdq(onnx, key, out, layer, transposed=transpose is not None)
        graph.initializer.extend(inits)
        new_nodes.append(node)
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path
