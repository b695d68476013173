"""Learned rounding: the rectified sigmoid and regulariser, binary rounding at the end, never worse than RTN."""

import copy

import torch

from qscale.ptq import PTQ_METHODS, PTQConfig, quantize_model
from qscale.ptq.learned_round import LearnedRoundLinear, beta_at, learn_block, rectified_sigmoid, rounding_regulariser
from qscale.ptq.sequential import BlockInput
from qscale.quant import QuantizedLinear, QuantSpec, fake_quantize


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
    assert beta_at(0, 100) == 20.0 and beta_at(100, 100) == 2.0


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
    err = lambda Q: float(((X @ (W - Q).t()) ** 2).sum())  # noqa: E731
    assert err(learned) < err(rtn)


def test_model_pass_never_worse_than_rtn_per_layer_and_registered():
    from transformers import LlamaConfig, LlamaForCausalLM

    assert "learned-round" in PTQ_METHODS
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    calib = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    rtn = copy.deepcopy(model)
    spec = QuantSpec(2, True, "group", 16)
    quantize_model(rtn, PTQConfig("rtn", spec), None)
    stats = quantize_model(model, PTQConfig("learned-round", spec, round_steps=30), calib)
    assert len(stats) == 14 and all(isinstance(model.get_submodule(n), QuantizedLinear) for n in stats)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = torch.nn.functional.log_softmax(copy.deepcopy(model).float()(input_ids=ids).logits, -1)
    assert torch.isfinite(ref).all()
