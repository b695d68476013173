"""The "tested" cells of ``qscale.export.compat``: each loader reads the folders qscale writes for tiny Llama,
GPT-NeoX and GPT-2 models, symmetric and asymmetric, with qscale's logits; where a peer cannot, it fails as the
note says. The docs table is the module's own."""

import inspect
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from qscale.data.tokenizer import train_bpe
from qscale.export import compat, export_model, load_quantized
from qscale.quant import QuantSpec

ROOT = Path(__file__).resolve().parents[2]
ARCHS = ("llama", "gpt_neox", "gpt2")
SYM = pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=64, n_layer=2, n_head=4, n_positions=64)).eval()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A folder holding only a tokenizer, copied into every written folder (GPTQModel.load needs one)."""
    folder = tmp_path_factory.mktemp("source")
    train_bpe(["a tiny corpus for a tiny tokenizer, nothing more. " * 40], 300).save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def quantized(kit):
    """arch -> sym -> an RTN 4-bit G = 32 quantized tiny model."""
    base = {"llama": kit.tiny_llama(), "gpt_neox": kit.tiny_neox(), "gpt2": tiny_gpt2()}
    return {a: {s: kit.ptq(m, "rtn", QuantSpec(4, s, "group", 32)) for s in (True, False)} for a, m in base.items()}


@pytest.fixture(scope="module")
def written(quantized, source, tmp_path_factory):
    """(arch, sym, fmt) -> folder, for every folder qscale writes (no compressed-tensors for GPT-2's Conv1D)."""
    base = tmp_path_factory.mktemp("written")
    out = {}
    for arch, by_sym in quantized.items():
        for sym, model in by_sym.items():
            for fmt in ("compressed-tensors", "gptq", "qscale"):
                if fmt == "compressed-tensors" and arch == "gpt2":
                    continue
                out[arch, sym, fmt] = export_model(model, base / f"{arch}-{sym}-{fmt}", fmt, source=source).path
    return out


def _quiet_from_pretrained(folder, **kw):
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu", **kw)
    finally:
        hf_logging.set_verbosity(level)


def test_qscale_reads_every_folder(kit, quantized, written):
    for (arch, sym, fmt), folder in written.items():
        ours, back = kit.logits(quantized[arch][sym]), kit.logits(load_quantized(folder))
        if fmt == "gptq":  # fp16 scales
            assert torch.allclose(back, ours, atol=1e-3), (arch, sym, fmt)
        else:
            assert torch.equal(back, ours), (arch, sym, fmt)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@SYM
def test_transformers_reads_compressed_tensors(kit, quantized, written, arch, sym):
    pytest.importorskip("compressed_tensors", reason="compressed-tensors (a test extra) is not installed")
    from transformers import CompressedTensorsConfig

    folder, ours = written[arch, sym, "compressed-tensors"], kit.logits(quantized[arch][sym])
    if sym:
        assert torch.allclose(kit.logits(_quiet_from_pretrained(folder)), ours, atol=1e-5)
    else:  # what the note says: plain from_pretrained fails, dequantize=True reads it
        with pytest.raises(RuntimeError, match=r"mismatched|size"):
            _quiet_from_pretrained(folder)
    hf = _quiet_from_pretrained(folder, quantization_config=CompressedTensorsConfig(dequantize=True))
    assert torch.allclose(kit.logits(hf), ours, atol=1e-5)
    assert compat.notes("compressed-tensors", sym, arch)[1].reads == ("yes" if sym else "with")


def _gptq_peers():
    pytest.importorskip("optimum", reason="optimum (a test extra) is not installed")
    pytest.importorskip("gptqmodel", reason="gptqmodel (a test extra, installed with --no-deps) is not installed")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@SYM
def test_transformers_reads_gptq(kit, written, arch, sym):
    _gptq_peers()
    folder = written[arch, sym, "gptq"]
    hf = _quiet_from_pretrained(folder)
    assert torch.allclose(kit.logits(hf), kit.logits(load_quantized(folder)), atol=1e-3)
    assert compat.notes("gptq", sym, arch)[1].reads == "yes"


@pytest.mark.filterwarnings("ignore")
def test_transformers_gptq_fails_on_gpt2(written):
    _gptq_peers()
    with pytest.raises(AttributeError, match="weight"):  # transformers' GPT-2 reads .weight of gptqmodel's layer
        _quiet_from_pretrained(written["gpt2", True, "gptq"])
    note = compat.notes("gptq", True, "gpt2")[1]
    assert note.reads == "no" and "GPTQModel.load" in note.how


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("arch", ARCHS)
def test_gptqmodel_load(kit, written, arch):
    _gptq_peers()
    from gptqmodel import GPTQModel

    folder = written[arch, True, "gptq"]
    model = GPTQModel.load(str(folder), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        theirs = model.model(input_ids=torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))).logits
    assert torch.allclose(theirs.float(), kit.logits(load_quantized(folder)), atol=1e-2)  # its kernel's own rounding
    with pytest.raises(ValueError, match="sym=False"):
        GPTQModel.load(str(written[arch, False, "gptq"]), device="cpu", dtype=torch.float32)
    assert [n.reads for n in compat.notes("gptq", True, arch)][2] == "yes"
    assert [n.reads for n in compat.notes("gptq", False, arch)][2] == "no"


@pytest.mark.parametrize("arch", ARCHS)
@SYM
def test_onnx_runtime_reads_every_architecture(kit, quantized, tmp_path, arch, sym):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is not installed")
    pytest.importorskip("onnx", reason="onnx (the onnx extra) is not installed")
    from qscale.export.onnx import export_onnx

    model = quantized[arch][sym]
    path = export_onnx(model, tmp_path / "model.onnx")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    theirs = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input_ids": ids.numpy()}
    )[0]
    with torch.no_grad():
        assert np.abs(theirs - model(input_ids=ids).logits.numpy()).max() < 1e-4


def test_every_cell_names_its_evidence_and_the_tests_exist():
    mine = {name for name, _ in inspect.getmembers(sys.modules[__name__], inspect.isfunction)}
    for fmt in compat.FORMATS:
        for sym in (True, False):
            for arch in (*compat.ARCHITECTURES, "mistral"):
                for n in compat.notes(fmt, sym, arch, bits=4, group_size=128):
                    assert n.reads in ("yes", "with", "no") and n.how
                    assert n.evidence.startswith(("tested: ", "documented: ", "by design", "not tested")), n
                    if n.evidence.startswith("documented: "):
                        assert set(n.evidence.removeprefix("documented: ").split(", ")) <= set(compat.SOURCES), n
                    if n.evidence.startswith("tested: test_") and not n.evidence.endswith(".py"):
                        assert n.evidence.removeprefix("tested: ") in mine, n.evidence
                    if n.reads != "yes":
                        assert "use" in n.how or "pass" in n.how or "only" in n.how, n  # what to do instead


def test_documented_limits():
    trt = {
        (s, b, g): compat.notes("onnx", s, "llama", b, g)[1].reads
        for s in (True, False)
        for b, g in ((4, 32), (8, 32), (8, None))
    }
    assert trt == {
        (True, 4, 32): "yes",
        (True, 8, 32): "no",
        (True, 8, None): "yes",
        (False, 4, 32): "no",
        (False, 8, 32): "no",
        (False, 8, None): "no",
    }
    assert compat.notes("compressed-tensors", True, "llama", bits=3)[2].reads == "no"  # vLLM: 4/8 bits
    assert [n.reads for n in compat.notes("qscale", True, "llama")] == ["yes", "no", "no"]


def test_lines_printed_by_quantize():
    out = compat.lines("compressed-tensors", False, "llama", 4, 128)
    assert out[0] == "Loaders of the compressed-tensors folder (asymmetric weights, Llama):"
    assert "with setting" in out[2] and "CompressedTensorsConfig(dequantize=True)" in out[2]
    assert out[2].endswith("(tested)")
    assert out[-1].strip().startswith("(docs/reference/compatibility.md")
    gpt2 = compat.lines("gptq", False, "gpt2", 3, None)
    assert "transformers" in gpt2[2] and ": no — " in gpt2[2] and "GPTQModel.load" not in gpt2[2]  # asym: qscale only
    mixed = compat.notes("compressed-tensors", True, "llama", bits=None)[2]
    assert mixed.reads == "with" and "4 or 8" in mixed.how
    assert "not in the tested set" in compat.lines("gptq", True, "mistral")[0]


def test_docs_table_is_the_modules():
    page = (ROOT / "docs" / "reference" / "compatibility.md").read_text()
    assert compat.table_markdown() in page
    for name, version in compat.VERSIONS.items():
        assert f"{name} {version}" in page
