"""ONNX QDQ export: ONNX Runtime (CPU) runs the graph with qscale's logits."""

import numpy as np
import pytest
import torch

from qscale.cli import main
from qscale.errors import QscaleError
from qscale.export import export_model
from qscale.export.onnx import export_onnx
from qscale.qat import QATRecipeConfig, convert, prepare
from qscale.quant import QuantSpec

ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is not installed")
onnx = pytest.importorskip("onnx", reason="onnx (the onnx extra) is not installed")


def _run(path, ids, optimize):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input_ids": ids.numpy()}
    )[0]


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(4, True, "group", 32),
        QuantSpec(3, False, "group", 32),
        QuantSpec(8, True, "channel", None),
        QuantSpec(6, False, "channel", None),
    ],
    ids=lambda s: s.label,
)
def test_onnx_runtime_logits_equal_qscale(kit, llama, tmp_path, spec):
    model = kit.ptq(llama, method="rtn", spec=spec)
    path = export_onnx(model, tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 14  # one per quantized linear layer
    q = next(i for i in graph.initializer if i.name.endswith("q_proj.weight_q"))
    expected = {
        (True, True): onnx.TensorProto.INT4,
        (True, False): onnx.TensorProto.UINT4,
        (False, True): onnx.TensorProto.INT8,
        (False, False): onnx.TensorProto.UINT8,
    }
    assert q.data_type == expected[(spec.bits <= 4, spec.symmetric)]
    assert not any(i.name.endswith("q_proj.weight") for i in graph.initializer)  # no float copy of the weight
    ids = torch.randint(0, 64, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits.numpy()
    assert np.abs(_run(path, ids, optimize=False) - ref).max() < 1e-4  # the QDQ graph as written
    # ORT's default optimizer may fuse per-channel DQ + MatMul into a kernel that also quantizes the
    # activations dynamically to 8 bits: close, not equal
    assert np.abs(_run(path, ids, optimize=True) - ref).max() < 2e-2


def test_cli_export_onnx_and_what_has_no_qdq_form(kit, llama, tmp_path, capsys):
    model = kit.ptq(llama, spec=QuantSpec(4, True, "group", 32))
    export_model(model, tmp_path / "ct", "compressed-tensors")
    assert main(["export", str(tmp_path / "ct"), "--format", "onnx", "--out", str(tmp_path / "edge")]) == 0
    assert (tmp_path / "edge" / "model.onnx").is_file()
    quest = kit.tiny_llama()
    prepare(quest, QATRecipeConfig("quest", w_bits=4, a_bits=16))
    convert(quest)
    with pytest.raises(QscaleError, match="ONNX QDQ: it computes in a Hadamard"):
        export_onnx(quest, tmp_path / "q.onnx")
