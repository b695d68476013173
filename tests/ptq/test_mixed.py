"""Importance-based mixed precision: the budget holds, sensitive layers get more bits, learned-round follows it."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qscale.errors import QscaleError
from qscale.ptq import PTQConfig, quantize_model
from qscale.ptq.layers import quantizable
from qscale.ptq.mixed import MIX_BITS, allocate_bits, fisher_diagonal, sensitivities
from qscale.quant import QuantizedLinear, QuantSpec, fake_quantize

SPEC = QuantSpec(4, True, "group", 16)


def test_allocation_respects_the_budget_and_orders_bits_by_sensitivity():
    importance = {f"l{i}": c for i, c in enumerate([1.0, 30.0, 3.0, 1000.0, 10.0, 0.1])}
    sizes = {n: 100 * (1 + i % 2) for i, n in enumerate(importance)}
    sens = {n: {b: c * 4.0 ** -b for b in MIX_BITS} for n, c in importance.items()}
    for avg in (2, 2.5, 3, 4.2, 8):
        bits = allocate_bits(sens, sizes, avg)
        assert sum(sizes[n] * b for n, b in bits.items()) <= avg * sum(sizes.values()) + 1e-9
        for a in importance:
            for b in importance:
                if importance[a] > importance[b] and sizes[a] == sizes[b]:
                    assert bits[a] >= bits[b], (avg, bits)
    bits = allocate_bits(sens, sizes, 3)
    assert bits["l3"] > bits["l5"] and len(set(bits.values())) > 1
    with pytest.raises(QscaleError, match="avg_bits"):
        allocate_bits(sens, sizes, 1.5)


def test_sensitivity_is_fisher_weighted_quantization_error():
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(8, 32, generator=g)}
    f = {"a": torch.rand(8, 32, generator=g)}
    s = sensitivities(w, f, SPEC, (2, 4))
    for b in (2, 4):
        q = fake_quantize(w["a"], QuantSpec(b, True, "group", 16))
        assert s["a"][b] == pytest.approx(float(0.5 * (f["a"] * (w["a"] - q) ** 2).sum()), rel=1e-5)
    assert s["a"][2] > s["a"][4]


def test_learned_round_with_an_average_bit_budget():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    calib = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    layers = quantizable(model, ("*lm_head",))
    fisher = fisher_diagonal(model, layers, calib)
    assert all(bool((f > 0).any()) and f.shape == m.weight.shape for f, m in zip(fisher.values(), layers.values()))
    assert not any(m.weight.requires_grad and m.weight.grad is not None for m in layers.values())
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    stats = quantize_model(model, PTQConfig("learned-round", SPEC, avg_bits=3, round_steps=10), calib)
    bits = {n: s["bits"] for n, s in stats.items()}
    assert sum(sizes[n] * b for n, b in bits.items()) <= 3 * sum(sizes.values())
    assert len(set(bits.values())) > 1
    assert all(model.get_submodule(n).spec.bits == b for n, b in bits.items())
    assert all(isinstance(model.get_submodule(n), QuantizedLinear) for n in bits)
    with pytest.raises(QscaleError, match="learned-round only"):
        PTQConfig("gptq", SPEC, avg_bits=3)
