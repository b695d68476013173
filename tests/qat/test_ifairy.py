"""iFairy recipe: QAT lowers its loss, converts to the complex-phase layout, exports (qscale), equal storage to
BitNet."""

import copy

import pytest
import torch

from qscale.errors import QscaleError
from qscale.export import export_model, load_quantized
from qscale.qat import QATRecipeConfig, convert, prepare, qat_finetune
from qscale.quant import QuantizedLinear
from qscale.quant.phase import mulfree_linear


def test_ifairy_trains_converts_and_round_trips(llama, batches, tmp_path):
    bitnet = copy.deepcopy(llama)
    losses = qat_finetune(llama, QATRecipeConfig("ifairy"), batches, steps=15, lr=1e-2, warmup_steps=2)
    assert losses[-1] < losses[0]
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    llama.eval()
    with torch.no_grad():
        trained = llama(input_ids=ids).logits
    convert(llama)
    layers = [m for m in llama.modules() if isinstance(m, QuantizedLinear)]
    assert layers and all(m.layout == "complex-phase" and m.spec.bits == 2 for m in layers)
    with torch.no_grad():
        assert torch.equal(llama(input_ids=ids).logits, trained)
        x = torch.randn(3, layers[0].in_features)
        qw = layers[0].qweight()
        xq = layers[0].act_quantizer(x)  # A8 per token, as BitNet
        assert torch.allclose(mulfree_linear(xq, qw.codes, qw.extras["phase_scale"]), layers[0](x), atol=1e-5)
    with pytest.raises(QscaleError, match="complex-phase layout"):
        export_model(llama, tmp_path / "ct", "compressed-tensors")
    export_model(llama, tmp_path / "n", "qscale")
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path / "n")(input_ids=ids).logits, trained)
    # equal storage: the same packed code bytes per layer as BitNet b1.58's 2-bit layout
    qat_finetune(bitnet, QATRecipeConfig("bitnet"), batches, steps=1, lr=1e-3)
    convert(bitnet)
    b_layers = [m for m in bitnet.modules() if isinstance(m, QuantizedLinear)]
    assert [m.weight_packed.numel() for m in layers] == [m.weight_packed.numel() for m in b_layers]


def test_ifairy_needs_even_widths_and_two_bits():
    with pytest.raises(QscaleError, match="w_bits 2"):
        QATRecipeConfig("ifairy", w_bits=4)
    lin = torch.nn.Sequential(torch.nn.Linear(5, 4))
    with pytest.raises(QscaleError, match="even in/out"):
        prepare(lin, QATRecipeConfig("ifairy", exclude=()))


# Golden values from PKULab1806/Fairy2i-W2 @ 438da49d33bc959ae81d35c4976c0be958325b72 (the Fairy2i/iFairy authors'
# W2 code), model_module/qat_modules.py ``QATLinearComplexPhaseV2`` (two-stage residual PhaseQuant,
# ``PhaseQuantSTE_V2``) run on CPU in a scratch folder outside the project: its weight golden.matrix(8, 12, 0.05),
# input golden.wave(3, 12); AUTHORS_WQ is the fake-quantized weight [8, 12], AUTHORS_Y the layer output [3, 8].
AUTHORS_WQ = [
    0.019004846,
    0.033230409,
    0.053178005,
    0.028122161,
    0.014225561,
    -0.013896599,
    -0.043489404,
    -0.028802836,
    0,
    -0.009992905,
    0.0041233636,
    0.024679473,
    0.014917566,
    0.038260441,
    -0.0010209661,
    -0.047127008,
    -0.014917566,
    -0.042347722,
    0.026403554,
    0.01584035,
    0.040519822,
    0.014686568,
    -0.026403554,
    -0.024679473,
    -0.0091173146,
    0.028122161,
    -0.013204595,
    -0.025055846,
    -0.0040872805,
    0.032901447,
    0.046367265,
    -0.07104674,
    -0.055206388,
    0.028802836,
    0.059329756,
    0,
    -0.0010209661,
    0.044060692,
    -0.029143127,
    -0.013204595,
    0.013204595,
    0.014225561,
    -0.040519822,
    0.053482309,
    0.011716986,
    -0.055206388,
    0.0058474448,
    0.053482309,
    0.014116269,
    0.028802836,
    0,
    0.03936604,
    -0.0041233636,
    -0.024679473,
    0.019004846,
    0.0047792848,
    -0.034943379,
    0.028122161,
    -0.014225561,
    -0.042347722,
    0.034650281,
    0.01584035,
    -0.008839123,
    0.014686568,
    -0.034650281,
    0.024679473,
    -0.014917566,
    -0.020025812,
    0.057265289,
    -0.047127008,
    0.014917566,
    -0.013896599,
    0.046367265,
    -0.021687793,
    -0.0058474448,
    -0.028802836,
    0.0017240811,
    0,
    -0.0091173146,
    0.028122161,
    -0.043039724,
    0.063065536,
    -0.033922412,
    0.06135257,
    0.008839123,
    -0.053482309,
    0.019963713,
    -0.0058474448,
    0.055206388,
    -0.053482309,
    0.057265289,
    -0.044060692,
    0.029143127,
    -0.043039724,
    0.043039724,
    -0.014225561,
]
AUTHORS_Y = [
    0.03861279,
    -0.012748347,
    -0.083591476,
    0.097152434,
    0.041804954,
    0.022757974,
    -0.085555866,
    0.010068998,
    -0.1395404,
    0.018439118,
    0.02499998,
    -0.033458944,
    -0.13511999,
    -0.045554861,
    0.0447198,
    -0.018516019,
    0.031073852,
    -0.0026319623,
    0.061548438,
    -0.050581589,
    0.051851284,
    -0.0017097034,
    0.064905196,
    0.023574069,
]


def test_phase_quantization_matches_the_authors_qat_layer(golden):
    lin = torch.nn.Sequential(torch.nn.Linear(12, 8, bias=False))
    with torch.no_grad():
        lin[0].weight.copy_(golden.matrix(8, 12, 0.05))
    prepare(lin, QATRecipeConfig("ifairy", a_bits=16, exclude=()))
    x = golden.wave(3, 12)
    up = golden.wave(3, 8, a=0.53, b=0.7)
    y = lin(x)
    (y * up).sum().backward()
    w_hat = lin[0].weight_quantizer(lin[0].weight).detach()
    assert torch.allclose(w_hat, torch.tensor(AUTHORS_WQ).reshape(8, 12), rtol=1e-6, atol=1e-9)
    assert torch.allclose(y.detach(), torch.tensor(AUTHORS_Y).reshape(3, 8), rtol=1e-6, atol=1e-8)
    assert torch.allclose(lin[0].weight.grad, up.T @ x, atol=1e-6)  # straight-through in W, as their STE in (U, V)
