"""QLLM: channel reassembly keeps the full-precision function and shrinks outlier channels; low-rank tuning
lowers the block error; the W4A4 result beats RTN with the same activation quantizer; the qscale format holds it."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qscale.errors import QscaleError
from qscale.export import export_model, load_quantized
from qscale.ptq import PTQ_METHODS, PTQConfig, quantize_model
from qscale.ptq.layers import quantizable, replace_module
from qscale.ptq.learned_round import layer_inputs
from qscale.ptq.qllm import QLLMLinear, reassembly_for, search_reassembly
from qscale.ptq.sequential import capture_block_inputs, run_block
from qscale.quant import QuantizedLinear, QuantSpec

SPEC = QuantSpec(4, True, "channel", None)


def _outlier_llama(twins: bool = False) -> LlamaForCausalLM:
    """A tiny Llama whose normalised inputs have outlier channels 2 and 3 (and 5 before the MLP); with ``twins``
    every linear layer's input columns 2k and 2k+1 are equal, so merging such a pair is exact."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    with torch.no_grad():
        for block in model.model.layers:
            block.input_layernorm.weight[2:4] = 30.0
            block.post_attention_layernorm.weight[5] = 20.0
        if twins:
            for mod in quantizable(model, ("*lm_head",)).values():
                mod.weight[:, 1::2] = mod.weight[:, 0::2]
    return model


CALIB = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(1))
IDS = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(2))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_registered_and_act_bits_validated():
    assert "qllm" in PTQ_METHODS
    with pytest.raises(QscaleError, match="act_bits"):
        PTQConfig("qllm", SPEC, act_bits=12)


def test_reassembly_keeps_the_fp_logits_and_shrinks_the_outlier_channels():
    model = _outlier_llama(twins=True)
    ref = _logits(model)
    rebuilt = copy.deepcopy(model)
    blocks = rebuilt.model.layers
    inputs = capture_block_inputs(rebuilt, blocks[0], CALIB, progress=False)
    extras = {}
    for b, block in enumerate(blocks):
        mods = {n: m for n, m in quantizable(rebuilt, ("*lm_head",)).items() if n.startswith(f"model.layers.{b}.")}
        xs = layer_inputs(block, mods, inputs)
        for name, mod in mods.items():
            r, stats = search_reassembly(xs[name], mod.weight.data, SPEC, act_bits=4)
            extras[name] = stats["extra_channels"]
            if r is not None:
                x = xs[name]
                assert float(r.apply(x).abs().max()) <= stats["theta"] * (1 + 1e-5) < float(x.abs().max())
            layer = QLLMLinear(mod.weight.data, mod.bias, SPEC, 4, 4, r)
            layer.quantize = False
            replace_module(rebuilt, name, layer)
        with torch.no_grad():
            inputs = [i.with_hidden(run_block(block, i)) for i in inputs]
    assert extras["model.layers.0.self_attn.q_proj"] > 0 and extras["model.layers.1.mlp.up_proj"] > 0
    out = _logits(rebuilt)
    assert torch.allclose(out, ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


def test_assembly_changes_a_layer_by_exactly_its_merge_errors_and_disassembly_is_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=g)
    x[:, 7] *= 40
    w = torch.randn(16, 32, generator=g)
    absmax = x.abs().amax(0)
    theta = float(absmax.max()) / 4
    r = reassembly_for(x, w, absmax, theta)
    assert r.width == 32 and r.src.numel() - 32 == int(torch.ceil(absmax / theta).clamp_min(1).sum()) - 32 > 0
    merged = [(int(r.dst[q]), q) for q in range(32) if int(r.dst[q]) != q]
    expected = x @ w.t()
    for a, b in merged:
        expected -= torch.outer(x[:, a] - x[:, b], w[:, a] - w[:, b]) / 2
    got = r.apply(x.double()) @ r.weight(w.double()).t()
    assert torch.allclose(got, expected.double(), atol=1e-4)
    outlier = [e for e in range(r.src.numel()) if int(r.src[e]) == 7]
    assert len(outlier) == 4 and all(abs(float(r.coef[e]) - 0.25) < 1e-7 for e in outlier)  # x_7/4 four times


def test_low_rank_tuning_lowers_every_block_error_and_beats_rtn_w4a4():
    model = _outlier_llama()
    ref = _logits(model)
    rtn, qllm, only = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    quantize_model(rtn, PTQConfig("rtn", SPEC, act_bits=4), None)
    stats = quantize_model(qllm, PTQConfig("qllm", SPEC, act_bits=4, qllm_steps=40), CALIB)
    quantize_model(only, PTQConfig("qllm", SPEC, act_bits=4, qllm_steps=0), CALIB)
    for b in (0, 1):
        s = stats[f"model.layers.{b}.self_attn.q_proj"]
        assert s["block_err_tuned"] < s["block_err_rtn"]
    assert all(isinstance(m, QuantizedLinear) and m.act_quantizer is not None and m.reassembled
               for n, m in qllm.named_modules() if n in stats)
    err = {k: float(((_logits(m) - ref) ** 2).mean()) for k, m in (("rtn", rtn), ("qllm", qllm), ("only", only))}
    assert err["qllm"] < err["only"] < err["rtn"]


def test_qscale_format_round_trips_the_reassembly_and_standard_formats_refuse(tmp_path):
    model = _outlier_llama()
    quantize_model(model, PTQConfig("qllm", QuantSpec(4, True, "group", 32), act_bits=6, qllm_steps=5), CALIB)
    export_model(model, tmp_path / "q", "qscale")
    loaded = load_quantized(tmp_path / "q")
    assert torch.equal(_logits(loaded), _logits(model))
    layer = loaded.get_submodule("model.layers.0.self_attn.q_proj")
    assert layer.reassembled and layer.act_quantizer.spec.bits == 6
    with pytest.raises(QscaleError, match="reassembled"):
        export_model(model, tmp_path / "ct", "compressed-tensors")
