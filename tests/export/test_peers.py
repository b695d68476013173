"""Real peer libraries read what qscale writes: compressed-tensors 0.20.0, transformers, GPTQModel 7.7.0."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from qscale.export import export_model, load_quantized
from qscale.quant import QuantSpec

CASES = [(4, True, 32), (3, False, 32), (8, True, None), (2, False, None), (6, True, 16)]


def _ours(kit, model, fp16_scales=False):
    out = {}
    for name, layer in kit.qlayers(model).items():
        qw = layer.qweight()
        if fp16_scales:
            qw.scale = qw.scale.half().float()
        out[f"{name}.weight"] = qw.dequantize()
    return out


@pytest.mark.parametrize("bits,sym,G", CASES)
def test_compressed_tensors_decompresses_our_folder_to_the_same_weights(kit, llama, tmp_path, bits, sym, G):
    convert = pytest.importorskip(
        "compressed_tensors.entrypoints.convert", reason="compressed-tensors (a test extra) is not installed"
    )
    model = kit.ptq(llama, spec=QuantSpec(bits, sym, "group" if G else "channel", G))
    export_model(model, tmp_path / "ct", "compressed-tensors")
    deq = convert.CompressedTensorsDequantizer(tmp_path / "ct", dtype=torch.float32)
    convert.convert_checkpoint(tmp_path / "ct", tmp_path / "deq", deq, max_workers=1, device="cpu")
    theirs = load_file(tmp_path / "deq" / "model.safetensors")
    for key, w in _ours(kit, model).items():
        assert torch.equal(theirs[key], w), key


@pytest.mark.parametrize("bits,sym,G", CASES[:3])
def test_transformers_loads_our_folder_with_compressed_tensors_config(kit, llama, tmp_path, bits, sym, G):
    pytest.importorskip("compressed_tensors", reason="compressed-tensors (a test extra) is not installed")
    from transformers import CompressedTensorsConfig

    model = kit.ptq(llama, spec=QuantSpec(bits, sym, "group" if G else "channel", G))
    export_model(model, tmp_path / "ct", "compressed-tensors")
    hf = AutoModelForCausalLM.from_pretrained(
        tmp_path / "ct", quantization_config=CompressedTensorsConfig(dequantize=True), dtype=torch.float32
    )
    state = hf.state_dict()
    for key, w in _ours(kit, model).items():
        assert torch.equal(state[key].float(), w), key
    assert torch.allclose(kit.logits(hf), kit.logits(model), atol=1e-5)
    assert torch.equal(kit.logits(load_quantized(tmp_path / "ct")), kit.logits(model))


@pytest.mark.parametrize("bits,sym,G", [(4, True, 32), (3, False, 32), (8, True, None), (2, True, 16)])
def test_gptqmodel_dequantizes_our_gptq_folder_to_the_same_weights(kit, llama, tmp_path, bits, sym, G):
    dequant = pytest.importorskip(
        "gptqmodel.utils.model_dequant", reason="gptqmodel (a test extra, installed with --no-deps) is not installed"
    )
    model = kit.ptq(llama, spec=QuantSpec(bits, sym, "group" if G else "channel", G))
    export_model(model, tmp_path / "gptq", "gptq")
    dequant.dequantize_model(tmp_path / "gptq", tmp_path / "deq", target_dtype=torch.float32)
    theirs = load_file(tmp_path / "deq" / "model.safetensors")
    for key, w in _ours(kit, model, fp16_scales=True).items():
        assert torch.equal(theirs[key], w), key


def test_mixed_precision_config_groups_read_back_by_compressed_tensors(kit, llama, tmp_path):
    """learned-round with an average-bit budget: one config group per bit width, each targeting its layers by name;
    compressed-tensors' converter and its per-module decompression in transformers give our weights and logits.
    (transformers' ``dequantize=True`` load path applies a single dense scheme to every layer, so it is not used.)"""
    convert = pytest.importorskip(
        "compressed_tensors.entrypoints.convert", reason="compressed-tensors (a test extra) is not installed"
    )
    from transformers import CompressedTensorsConfig

    model = kit.ptq(llama, "learned-round", QuantSpec(4, True, "group", 32), avg_bits=3, round_steps=10)
    bits = {n: m.spec.bits for n, m in kit.qlayers(model).items()}
    assert len(set(bits.values())) > 1
    export_model(model, tmp_path / "ct", "compressed-tensors")
    groups = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["config_groups"]
    assert len(groups) == len(set(bits.values()))
    for group in groups.values():
        assert {bits[t] for t in group["targets"]} == {group["weights"]["num_bits"]}
    deq = convert.CompressedTensorsDequantizer(tmp_path / "ct", dtype=torch.float32)
    convert.convert_checkpoint(tmp_path / "ct", tmp_path / "deq", deq, max_workers=1, device="cpu")
    theirs = load_file(tmp_path / "deq" / "model.safetensors")
    for key, w in _ours(kit, model).items():
        assert torch.equal(theirs[key], w), key
    hf = AutoModelForCausalLM.from_pretrained(
        tmp_path / "ct", quantization_config=CompressedTensorsConfig(dequantize=False), dtype=torch.float32
    )
    assert torch.allclose(kit.logits(hf), kit.logits(model), atol=1e-5)
    assert torch.equal(kit.logits(load_quantized(tmp_path / "ct")), kit.logits(model))
