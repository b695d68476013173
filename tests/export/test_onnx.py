"""ONNX QDQ export: ONNX Runtime (CPU) runs the graph with qscale's logits, through its MatMulNBits kernel."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from qscale.cli import main
from qscale.errors import QscaleError
from qscale.export import compat, export_model
from qscale.export.onnx import export_onnx
from qscale.qat import QATRecipeConfig, convert, prepare
from qscale.quant import QuantSpec

ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is not installed")
onnx = pytest.importorskip("onnx", reason="onnx (the onnx extra) is not installed")
ROOT = Path(__file__).resolve().parents[2]


def _run(path, ids, optimize=True, accuracy=None, save=None):
    """Logits from ONNX Runtime; ``save``: where ORT writes the graph it optimized; ``accuracy``: MatMulNBits'
    accuracy level (ORT's default 4 quantizes the activations to int8 on the fly, 0 computes in fp32)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if accuracy is not None:
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy))
    if save is not None:
        so.optimized_model_filepath = str(save)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input_ids": ids.numpy()})[0]


def _fused(path, ids, tmp_path):
    """ORT's optimized graph: {quantized weight initializer: MatMulNBits attributes}, and its other op types."""
    _run(path, ids, save=tmp_path / "optimized.onnx")
    nodes = onnx.load(str(tmp_path / "optimized.onnx")).graph.node
    fused = {
        n.input[1].removesuffix("_q_T"): {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        for n in nodes
        if n.op_type == "MatMulNBits"
    }
    return fused, {n.op_type for n in nodes}


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(4, True, "group", 32),
        QuantSpec(4, False, "group", 32),
        QuantSpec(3, False, "group", 32),
        QuantSpec(8, True, "channel", None),
        QuantSpec(6, False, "channel", None),
    ],
    ids=lambda s: s.label,
)
def test_onnx_runtime_fuses_every_layer_into_matmulnbits_with_qscales_logits(kit, llama, tmp_path, spec):
    model = kit.ptq(llama, method="rtn", spec=spec)
    layers = kit.qlayers(model)
    path = export_onnx(model, tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == len(layers) == 14  # one per quantized linear layer
    assert not any(n.op_type == "Transpose" and n.input[0].endswith("_proj.weight") for n in graph.node)
    q = next(i for i in graph.initializer if i.name.endswith("layers.0.mlp.down_proj.weight_q"))
    expected = {
        (True, True): onnx.TensorProto.INT4,
        (True, False): onnx.TensorProto.UINT4,
        (False, True): onnx.TensorProto.INT8,
        (False, False): onnx.TensorProto.UINT8,
    }
    assert q.data_type == expected[(spec.bits <= 4, spec.symmetric)]
    assert list(q.dims) == [128, 64]  # [in, out]: the matrix MatMul consumes
    assert not any(i.name.endswith("q_proj.weight") for i in graph.initializer)  # no float copy of the weight
    ids = torch.randint(0, 64, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits.numpy()
    fused, ops = _fused(path, ids, tmp_path)
    assert set(fused) == {f"model.{name}.weight" for name in layers}  # every quantized linear, fused
    assert "DequantizeLinear" not in ops  # no weight is dequantized to fp32 at run time
    for name, layer in layers.items():
        attrs = fused[f"model.{name}.weight"]
        assert (attrs["K"], attrs["N"]) == (layer.in_features, layer.out_features)
        assert attrs["bits"] == (4 if spec.bits <= 4 else 8)
        if spec.granularity == "group":
            assert attrs["block_size"] == spec.group_size
    # fp32 activations: the QDQ graph as written and the fused kernel agree with qscale to float rounding
    # (measured 1.5e-7 to 2.5e-7 on this model)
    assert np.abs(_run(path, ids, optimize=False) - ref).max() < 2e-6
    assert np.abs(_run(path, ids, accuracy=0) - ref).max() < 2e-6
    # ORT's default accuracy level 4 quantizes the activations to int8 per block on the fly: close, not equal
    # (measured 3e-3 to 5e-3)
    assert np.abs(_run(path, ids) - ref).max() < 2e-2


def test_a_weight_not_read_by_one_transpose_keeps_the_out_in_layout(kit, llama, tmp_path, monkeypatch):
    import qscale.export.onnx as onnx_export

    model = kit.ptq(llama, method="rtn", spec=QuantSpec(4, False, "group", 32))
    monkeypatch.setattr(onnx_export, "_only_transpose", lambda graph, key: None)  # as if read by another op
    path = export_onnx(model, tmp_path / "model.onnx")
    q = next(i for i in onnx.load(str(path)).graph.initializer if i.name.endswith("layers.0.mlp.down_proj.weight_q"))
    assert list(q.dims) == [64, 128]  # [out, in], dequantized then transposed by the traced graph
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits.numpy()
    assert np.abs(_run(path, ids, optimize=False) - ref).max() < 2e-6
    fused, ops = _fused(path, ids, tmp_path)
    assert not fused and "DequantizeLinear" in ops  # ORT dequantizes this layout on every run


def _units(text: str):
    """Paragraphs of a Markdown page, each table row its own unit."""
    for para in re.split(r"\n\s*\n", text):
        rows = [line for line in para.splitlines() if line.lstrip().startswith("|")]
        yield from rows if rows else [para]


def test_tensorrt_is_promised_for_symmetric_exports_only(kit, llama, tmp_path, capsys):
    """TensorRT's Dequantize takes zero points of 0 only: an asymmetric export must not be sold as TensorRT's."""
    for sym in (True, False):
        model = kit.ptq(llama, method="rtn", spec=QuantSpec(4, sym, "group", 32))
        export_model(model, tmp_path / f"ct{sym}", "compressed-tensors")
        capsys.readouterr()
        assert main(["export", str(tmp_path / f"ct{sym}"), "--format", "onnx", "--out", str(tmp_path / f"e{sym}")]) == 0
        trt = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("TensorRT"))
        assert trt.strip().startswith("TensorRT: yes" if sym else "TensorRT: no"), trt
        assert sym or "--sym" in trt
        assert compat.notes("onnx", sym, "llama", 4, 32)[1].reads == ("yes" if sym else "no")
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        for unit in _units(page.read_text()):
            if "TensorRT" in unit:  # every promise of TensorRT names the symmetric limit
                assert re.search(r"\bsym|zero-valued", unit), f"{page.name}: {unit[:200]}"
    assert main(["export", "--help"]) == 0
    assert "TensorRT reads symmetric" in " ".join(capsys.readouterr().out.split())


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
