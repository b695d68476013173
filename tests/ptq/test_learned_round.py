"""Learned rounding: BRECQ's golden values (MSE range, rectified sigmoid, regulariser, β schedule), binary
rounding at the end, never worse than RTN."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qscale.ptq import PTQ_METHODS, PTQConfig, quantize_model
from qscale.ptq.clip import mse_qparams
from qscale.ptq.learned_round import (
    LearnedRoundLinear,
    beta_at,
    learn_block,
    rectified_sigmoid,
    regularised,
    rounding_regulariser,
)
from qscale.ptq.sequential import BlockInput
from qscale.quant import QuantizedLinear, QuantSpec, fake_quantize, grouped

# Golden values from the authors' code, github:yhhhli/BRECQ at e455d62e93c70351961f8991c913b59435bd165f, run on
# CPU in a scratch folder: quant/quant_layer.py UniformAffineQuantizer(n_bits, symmetric=False, channel_wise=True,
# scale_method='mse') (BRECQ's weight quantizer) on W below; quant/adaptive_rounding.py AdaRoundQuantizer(...,
# 'learned_hard_sigmoid').get_soft_targets() at initialisation; its regulariser
# Σ 1 − |2h − 1|^b at b = 7 (quant/block_recon.py LossFunction); LinearTempDecay(100, 0.2, 20, 2)(t).
GOLDEN_DELTA = {
    2: [1.0260754823684692, 1.1297904253005981, 0.8566029071807861],
    3: [0.46338894963264465, 0.5696422457695007, 0.3870674669742584],
}
GOLDEN_ZERO = {2: [2.0, 1.0, 2.0], 3: [5.0, 3.0, 4.0]}
GOLDEN_H_ROW0 = {
    2: [
        0.7483024597167969,
        0.6362345218658447,
        0.9661417007446289,
        0.9741089344024658,
        0.1384405791759491,
        0.7568683624267578,
        0.39261335134506226,
        0.15557712316513062,
    ],
    3: [
        0.014098644256591797,
        0.19451922178268433,
        0.7107424736022949,
        0.15695545077323914,
        0.0922614261507988,
        0.24735140800476074,
        0.6550724506378174,
        0.13020658493041992,
    ],
}
GOLDEN_REG_B7 = {2: 21.25078010559082, 3: 21.897005081176758}
GOLDEN_TEMP = [(1, 20.0), (19, 20.0), (20, 20.0), (21, 19.775), (50, 13.25), (99, 2.225), (100, 2.0)]


def _brecq_weight():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 8, generator=g, dtype=torch.float64).float()
    w[1, 3] = 2.5  # an outlier in row 1: the MSE range clips it
    return w


@pytest.mark.parametrize("bits", [2, 3])
def test_mse_range_rounding_and_regulariser_equal_brecq(bits):
    w = _brecq_weight()
    spec = QuantSpec(bits, symmetric=False, granularity="channel", group_size=None)
    s, z = mse_qparams(w, spec)
    assert s.flatten().tolist() == pytest.approx(GOLDEN_DELTA[bits], rel=1e-6)
    assert z.flatten().tolist() == GOLDEN_ZERO[bits]
    layer = LearnedRoundLinear(w, None, spec, learn_scale=False)  # starts from BRECQ's range, not absmax
    assert layer.scale.flatten().tolist() == pytest.approx(GOLDEN_DELTA[bits], rel=1e-6)
    h = rectified_sigmoid(layer.v)
    assert h[0].tolist() == pytest.approx(GOLDEN_H_ROW0[bits], abs=1e-5)
    assert float(rounding_regulariser(h.detach(), 7.0)) == pytest.approx(GOLDEN_REG_B7[bits], rel=1e-5)


def test_beta_schedule_equals_brecq_linear_temp_decay():
    for t, b in GOLDEN_TEMP:
        assert beta_at(t - 1, 100) == pytest.approx(b, abs=1e-9)  # BRECQ counts from 1
    assert not regularised(18, 100) and regularised(19, 100)  # its loss starts at count 0.2·100


class _OneLayer(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return (self.layer(x),)


def test_definitions():
    v = torch.tensor([-20.0, 0.0, 20.0])
    assert rectified_sigmoid(v).tolist() == [0.0, 0.5, 1.0]
    assert float(rounding_regulariser(torch.tensor([0.0, 1.0]), 2.0)) == 0.0
    assert float(rounding_regulariser(torch.tensor([0.5]), 2.0)) == 1.0


def test_one_layer_ends_binary_and_beats_rtn_on_correlated_inputs():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g)
    W = torch.randn(32, 64, generator=g) * 0.1
    spec = QuantSpec(3, True, "group", 32)
    layer = LearnedRoundLinear(W, None, spec, learn_scale=False)
    inside = (layer.weight() - W).abs() < 1e-6  # starts at the unrounded weight, but for the clamped absmax
    assert inside.float().mean() > 0.9
    block = _OneLayer(layer)
    inputs = [BlockInput((x,), {}) for x in X.split(128)]
    targets = [x @ W.t() for x in X.split(128)]
    learn_block(block, {"layer": layer}, inputs, targets, steps=300, lr=3e-2)
    h = rectified_sigmoid(layer.v)
    assert ((h < 1e-3) | (h > 1 - 1e-3)).float().mean() > 0.95  # the regulariser drove h to 0/1
    learned = layer.freeze(X).dequantize()
    rtn = fake_quantize(W, spec)

    def err(Q: torch.Tensor) -> float:
        return float(((X @ (W - Q).t()) ** 2).sum())

    assert err(learned) < err(rtn)


def test_model_pass_never_worse_than_rtn_per_layer_and_registered():
    """q/k/v of block 0 read the normalised embeddings, the same tensor in every model: on those rows each
    learned-round layer reconstructs its outputs at least as well as the ``rtn`` method's layer, and the whole
    model's logits are closer to full precision than RTN's."""
    assert "learned-round" in PTQ_METHODS
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    calib = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    ref = copy.deepcopy(model)
    rtn, learned = copy.deepcopy(model), model
    spec = QuantSpec(2, True, "group", 16)
    quantize_model(rtn, PTQConfig("rtn", spec), None)
    stats = quantize_model(learned, PTQConfig("learned-round", spec, round_steps=60), calib)
    assert len(stats) == 14 and all(isinstance(learned.get_submodule(n), QuantizedLinear) for n in stats)
    with torch.no_grad():
        x = ref.model.layers[0].input_layernorm(ref.model.embed_tokens(calib)).reshape(-1, 32)
    gains = []
    for proj in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.0.self_attn.{proj}"
        w = ref.get_submodule(name).weight.detach()
        err = {
            k: float(((x @ (w - m.get_submodule(name).dequantized_weight()).t()) ** 2).sum())
            for k, m in (("rtn", rtn), ("learned", learned))
        }
        assert err["learned"] <= err["rtn"] * (1 + 1e-6), (proj, err)
        gains.append(err["rtn"] / err["learned"])
    assert max(gains) > 1.2, gains  # and clearly better on at least one
    with torch.no_grad():
        logits = {k: m(input_ids=calib).logits for k, m in (("ref", ref), ("rtn", rtn), ("learned", learned))}
    mse = {k: float((logits[k] - logits["ref"]).pow(2).mean()) for k in ("rtn", "learned")}
    assert mse["learned"] < mse["rtn"], mse


def test_gradient_flow_rounding_variables_learn_and_the_rest_stays_bit_identical():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 32, generator=g)
    W = torch.randn(16, 32, generator=g) * 0.1
    layer = LearnedRoundLinear(W, None, QuantSpec(3, True, "group", 16), learn_scale=False)
    v0, w0, s0, z0 = (t.detach().clone() for t in (layer.v, layer.w, layer.scale, layer.zero))
    layer(X).pow(2).sum().backward()
    h = rectified_sigmoid(layer.v).detach()
    soft = torch.floor(grouped(W, layer.spec) / layer.scale.detach()) + layer.zero + h
    live = (h > 0) & (h < 1) & (soft > layer.spec.qmin) & (soft < layer.spec.qmax)  # where h(V) passes a gradient
    assert live.float().mean() > 0.9 and bool((layer.v.grad[live] != 0).all()) and layer.scale.grad is None
    layer.v.grad = None
    learn_block(_OneLayer(layer), {"layer": layer}, [BlockInput((X,), {})], [X @ W.t()], steps=5, lr=1e-2)
    assert not torch.equal(layer.v, v0)
    assert torch.equal(layer.w, w0) and torch.equal(layer.scale, s0) and torch.equal(layer.zero, z0)
