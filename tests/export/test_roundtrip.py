"""``load_quantized(export(m))``: the same integer weights and logits, for every format, bit width and recipe."""

import pytest
import torch

from qscale.export import compressed_tensors as ct
from qscale.export import export_model, folder_bytes, load_quantized
from qscale.export.folder import base_config, model_tensors, write_model_folder
from qscale.qat import QATRecipeConfig, convert, prepare
from qscale.quant import QuantizedLinear, QuantSpec


def _same_weights(kit, a, b, fp16_scales=False):
    la, lb = kit.qlayers(a), kit.qlayers(b)
    assert list(la) == list(lb)
    for n in la:
        qa = la[n].qweight()
        if fp16_scales:  # GPTQ stores fp16 scales
            qa.scale = qa.scale.half().float()
        expected = qa.dequantize()
        assert torch.equal(lb[n].dequantized_weight(), expected), n


PTQ_CASES = [(b, s, g) for b in (2, 3, 4, 8) for s in (True, False) for g in (32, None)]


@pytest.mark.parametrize("bits,sym,G", PTQ_CASES)
@pytest.mark.parametrize("fmt", ["compressed-tensors", "gptq", "qscale"])
def test_ptq_roundtrip_bit_for_bit(kit, llama, tmp_path, bits, sym, G, fmt):
    spec = QuantSpec(bits, sym, "group" if G else "channel", G)
    model = kit.ptq(llama, spec=spec)
    export_model(model, tmp_path / "m", fmt)
    back = load_quantized(tmp_path / "m")
    gptq = fmt == "gptq"
    _same_weights(kit, model, back, fp16_scales=gptq)
    if not gptq:  # compressed-tensors keeps the fp32 model's scales in fp32: identical logits
        assert torch.equal(kit.logits(back), kit.logits(model))
    else:
        assert torch.allclose(kit.logits(back), kit.logits(model), atol=1e-3)


def test_act_order_and_other_bit_widths_roundtrip(kit, llama, tmp_path):
    for bits in (5, 6, 7):
        model = kit.ptq(llama, spec=QuantSpec(bits, True, "group", 16), act_order=True)
        export_model(model, tmp_path / f"m{bits}", "compressed-tensors")
        _same_weights(kit, model, load_quantized(tmp_path / f"m{bits}"))


def test_neox_tied_llama_and_sharded_folder(kit, tmp_path):
    for i, model in enumerate((kit.ptq(kit.tiny_neox()), kit.ptq(kit.tiny_llama(tie=True), method="rtn"))):
        export_model(model, tmp_path / f"m{i}", "compressed-tensors")
        back = load_quantized(tmp_path / f"m{i}")
        assert torch.equal(kit.logits(back), kit.logits(model))
    model = kit.ptq(kit.tiny_llama())
    cfg = {**base_config(model, torch.float32), "quantization_config": ct.quantization_config(model)}
    write_model_folder(
        tmp_path / "sharded",
        model_tensors(model, ct.layer_tensors(torch.float32), torch.float32),
        cfg,
        None,
        max_shard_bytes=20_000,
    )
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
    assert torch.equal(kit.logits(load_quantized(tmp_path / "sharded")), kit.logits(model))


QAT_CASES = [
    (QATRecipeConfig("ste", w_bits=4, a_bits=16, group_size=32), "compressed-tensors"),
    (QATRecipeConfig("lsq", w_bits=3, a_bits=16, group_size=None), "gptq"),
    (QATRecipeConfig("bitnet", a_bits=16), "compressed-tensors"),  # ternary as 2-bit symmetric
    (QATRecipeConfig("lsq", w_bits=4, a_bits=4, group_size=32, lsq_plus=True), "qscale"),
    (QATRecipeConfig("quest", w_bits=4, a_bits=4), "qscale"),
    (QATRecipeConfig("pbllm", salient_fraction=0.1), "qscale"),
    (QATRecipeConfig("bitnet"), "qscale"),
]


@pytest.mark.parametrize("cfg,fmt", QAT_CASES, ids=[f"{c.label}-{f}" for c, f in QAT_CASES])
def test_qat_convert_export_load_same_logits_as_fake_quant(kit, tmp_path, cfg, fmt):
    model = kit.tiny_llama()
    prepare(model, cfg)
    with torch.no_grad():  # a forward initializes LSQ activation steps
        model(input_ids=torch.randint(0, 64, (2, 8)))
    fake = kit.logits(model)
    convert(model)
    assert torch.allclose(kit.logits(model), fake, atol=1e-5, rtol=0)
    export_model(model, tmp_path / "m", fmt)
    back = load_quantized(tmp_path / "m")
    _same_weights(kit, model, back, fp16_scales=fmt == "gptq")
    if fmt == "gptq":
        assert torch.allclose(kit.logits(back), fake, atol=1e-3)
    else:
        assert torch.equal(kit.logits(back), kit.logits(model))
    assert all(isinstance(m, QuantizedLinear) for m in kit.qlayers(back).values())


def test_file_sizes_within_three_percent_of_theory(kit, tmp_path):
    """bits·params/8 + scales + zero points + full-precision parts (+ GPTQ's g_idx and int64 shapes); the
    files also hold safetensors' JSON header, which this layer size keeps near 1%."""
    model = kit.ptq(kit.tiny_llama(hidden=256), method="rtn", spec=QuantSpec(3, False, "group", 32))
    fp_bytes = sum(
        t.numel() * 4 for k, t in model.state_dict().items() if "embed" in k or "norm" in k or "lm_head" in k
    )
    layers = kit.qlayers(model)
    n_w = sum(m.in_features * m.out_features for m in layers.values())
    n_groups = sum(m.out_features * m.weight_scale.shape[1] for m in layers.values())
    theory = {
        "compressed-tensors": n_w * 3 / 8 + n_groups * (4 + 3 / 8) + 16 * len(layers),
        "gptq": n_w * 3 / 8 + n_groups * (2 + 3 / 8) + 4 * sum(m.in_features for m in layers.values()),
    }
    for fmt, expected in theory.items():
        export_model(model, tmp_path / fmt, fmt)
        size = folder_bytes(tmp_path / fmt) - fp_bytes
        assert abs(size - expected) / expected < 0.03, (fmt, size, expected)
