"""Importance-based mixed precision: the Fisher is a mean of per-window squared gradients, the sensitivity weighs
BRECQ's quantization error, the budget holds, sensitive layers get more bits, learned-round follows it."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from qscale.errors import QscaleError
from qscale.ptq import PTQConfig, quantize_model
from qscale.ptq.layers import quantizable
from qscale.ptq.mixed import MIX_BITS, allocate_bits, fisher_diagonal, sensitivities
from qscale.quant import QuantizedLinear, QuantSpec

SPEC = QuantSpec(4, True, "group", 16)


def test_allocation_respects_the_budget_and_orders_bits_by_sensitivity():
    importance = {f"l{i}": c for i, c in enumerate([1.0, 30.0, 3.0, 1000.0, 10.0, 0.1])}
    sizes = {n: 100 * (1 + i % 2) for i, n in enumerate(importance)}
    sens = {n: {b: c * 4.0**-b for b in MIX_BITS} for n, c in importance.items()}
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


# BRECQ's round-to-nearest weights on its MSE range (github:yhhhli/BRECQ at e455d62e93c70351961f8991c913b59435bd165f,
# quant/quant_layer.py UniformAffineQuantizer(n_bits, symmetric=False, channel_wise=True, scale_method='mse'),
# run on CPU in a scratch folder) of the weight of tests/ptq/test_learned_round.py::_brecq_weight.
BRECQ_WQ = {
    2: [
        [
            -2.0521509647369385,
            0.0,
            -1.0260754823684692,
            1.0260754823684692,
            -1.0260754823684692,
            -1.0260754823684692,
            -1.0260754823684692,
            -1.0260754823684692,
        ],
        [
            0.0,
            1.1297904253005981,
            -1.1297904253005981,
            2.2595808506011963,
            -1.1297904253005981,
            -1.1297904253005981,
            0.0,
            -1.1297904253005981,
        ],
        [
            0.8566029071807861,
            0.8566029071807861,
            0.0,
            -0.8566029071807861,
            -0.8566029071807861,
            0.0,
            -1.7132058143615723,
            0.8566029071807861,
        ],
    ],
    3: [
        [
            -2.3169448375701904,
            -0.46338894963264465,
            -0.9267778992652893,
            0.9267778992652893,
            -0.9267778992652893,
            -1.3901668787002563,
            -0.46338894963264465,
            -0.9267778992652893,
        ],
        [
            0.0,
            0.5696422457695007,
            -1.1392844915390015,
            2.278568983078003,
            -1.7089266777038574,
            -0.5696422457695007,
            0.5696422457695007,
            -1.1392844915390015,
        ],
        [
            0.7741349339485168,
            1.1612024307250977,
            0.0,
            -0.7741349339485168,
            -0.7741349339485168,
            0.0,
            -1.5482698678970337,
            1.1612024307250977,
        ],
    ],
}


def test_sensitivity_weighs_brecqs_quantization_error_by_the_fisher():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 8, generator=g, dtype=torch.float64).float()
    w[1, 3] = 2.5
    fisher = torch.rand(3, 8, generator=torch.Generator().manual_seed(3))
    s = sensitivities({"a": w}, {"a": fisher}, QuantSpec(4, False, "channel", None), (2, 3))
    for b in (2, 3):
        assert s["a"][b] == pytest.approx(float(0.5 * (fisher * (w - torch.tensor(BRECQ_WQ[b])) ** 2).sum()), rel=1e-5)


def _tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()


def test_fisher_is_the_mean_of_per_window_squared_gradients():
    model = _tiny_llama()
    calib = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(1))
    layers = quantizable(model, ("*lm_head",))
    fisher = fisher_diagonal(model, layers, calib)
    grads = []  # each window's gradient, by plain backward passes on a copy
    for ids in calib:
        m = copy.deepcopy(model)
        logits = m(input_ids=ids[None, :-1]).logits
        F.cross_entropy(logits.flatten(0, 1), ids[1:]).backward()
        grads.append({n: m.get_submodule(n).weight.grad for n in layers})
    for n in layers:
        per_sample = sum(g[n] ** 2 for g in grads) / len(grads)
        assert torch.allclose(fisher[n], per_sample, rtol=1e-4, atol=1e-12), n
        batch_mean = (sum(g[n] for g in grads) / len(grads)) ** 2  # what a batch-mean gradient squared would give
        assert not torch.allclose(fisher[n], batch_mean, rtol=1e-2)


def test_learned_round_with_an_average_bit_budget():
    model = _tiny_llama()
    calib = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    layers = quantizable(model, ("*lm_head",))
    fisher = fisher_diagonal(model, layers, calib)
    assert all(
        bool((f > 0).any()) and f.shape == m.weight.shape for f, m in zip(fisher.values(), layers.values(), strict=True)
    )
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
