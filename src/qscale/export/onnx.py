"""Edge export: an ONNX graph whose quantized weights are integer initializers behind DequantizeLinear (QDQ).

The form TensorRT and ONNX Runtime consume (the wildfire-detection seed deploys QAT models with TensorRT on a
Jetson). The model is traced with ``torch.onnx.export`` (opset 21) with each ``QuantizedLinear`` standing in
as a plain linear layer, then every such weight initializer is replaced by its integer codes — int4/uint4 for
up to 4 bits (opset 21's 4-bit types), int8/uint8 otherwise — its scales and zero points, and a
``DequantizeLinear`` node producing the weight under its old name: per output channel (``axis = 0``) or
blocked per group of G input columns (``axis = 1``, ``block_size = G``, opset 21). Weight-only: activation
quantizers (dynamic per token), PB-LLM's layout, QuEST's rotation and half-integer zeros have no QDQ form here.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
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


def _qdq(onnx, name: str, layer: QuantizedLinear) -> tuple[list, object]:
    """Initializers (codes, scale, zero) and the DequantizeLinear node producing tensor ``name``."""
    helper, TP = onnx.helper, onnx.TensorProto
    qw = layer.qweight()
    spec = qw.spec
    small = spec.bits <= 4
    elem = (TP.INT4 if small else TP.INT8) if spec.symmetric else (TP.UINT4 if small else TP.UINT8)
    codes = qw.codes.to(torch.int32).numpy()
    if spec.granularity == "group":
        scale, zero, attrs = qw.scale, qw.zero, {"axis": 1, "block_size": spec.group_size}
    else:
        scale, zero, attrs = qw.scale[:, 0], qw.zero[:, 0], {"axis": 0}
    zeros = zero.to(torch.int32).numpy() if not spec.symmetric else np.zeros(tuple(scale.shape), dtype=np.int32)
    inits = [
        helper.make_tensor(f"{name}_q", elem, codes.shape, codes.flatten().tolist()),
        helper.make_tensor(f"{name}_scale", TP.FLOAT, tuple(scale.shape), scale.float().flatten().tolist()),
        helper.make_tensor(f"{name}_zero", elem, zeros.shape, zeros.flatten().tolist()),
    ]
    node = helper.make_node(
        "DequantizeLinear",
        [f"{name}_q", f"{name}_scale", f"{name}_zero"],
        [name],
        name=f"{name}_DequantizeLinear",
        **attrs,
    )
    return inits, node


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
    proto = program.model_proto
    graph = proto.graph
    by_name = {init.name: init for init in graph.initializer}
    new_nodes = []
    for name, layer in layers.items():
        key = f"model.{name}.weight"
        require(key in by_name, f"ONNX graph has no initializer {key} for layer {name}")
        graph.initializer.remove(by_name[key])
        inits, node = _qdq(onnx, key, layer)
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
