"""BitNet b1.58 against its authors' training code: ternary weight codes and the 8-bit per-token activations."""

import torch

from qscale.qat.bitnet import TernaryWeightQuantizer
from qscale.qat.ste import STEActQuantizer, act_spec

# Golden values from microsoft/unilm @ 768a3c873f598bb9b4d4dfb9267b099e35f8fe56,
# bitnet/The-Era-of-1-bit-LLMs__Training_Tips_Code_FAQ.pdf, Figure 3: ``weight_quant`` and ``activation_quant``
# transcribed verbatim into a scratch folder outside the project and run on CPU on the ``golden`` inputs below.
# Weight [0, 0] sits 2e-4 (relative) above γ/2: the authors' code (γ clamped at ε) gives it code 1, the paper's
# literal W/(γ + ε) gives 0.
W00 = 0.006835721433162689
AUTHORS_CODES = [
    "++0++++++000----",
    "----000++++++++0",
    "-0------0--++0++",
    "+++00+0--------0",
    "00++++++++0-0---",
    "---0--+00+++++00",
    "+--0------0-0+++",
    "+++++000--------",
]
AUTHORS_GAMMA = 0.013668709
AUTHORS_ACTS = [
    0.40155038,
    1.7715459,
    0.70861834,
    1.5353397,
    2.9998176,
    1.5353397,
    0.68499774,
    1.7243047,
    0.37792978,
    -1.5589603,
    -0.77948016,
    -1.0156863,
    -2.8817146,
    -2.0549932,
    -0.70861834,
    -1.7243047,
    -0.011208252,
    0.011647792,
    0.0090105562,
    0.0057140109,
    0.025273509,
    0.025053741,
    0.0087907864,
    0.016043184,
    0.017361803,
    -0.0059337807,
    -0.0096698646,
    -0.0024174661,
    -0.019999038,
    -0.027910747,
    -0.011428022,
    -0.014065258,
    -2.1647396,
    -0.11274686,
    0.96962297,
    0.045098744,
    1.3529623,
    2.8637702,
    1.5108079,
    1.1951168,
    2.3676841,
    0.87942553,
    -0.81177735,
    0,
    -0.69903052,
    -2.7059245,
    -1.8715979,
    -1.0372711,
]


def test_ternary_weights_match_the_authors_weight_quant(golden):
    w = golden.wave(8, 16, a=0.29, b=0.3) * 0.02
    w[0, 0] = W00
    codes = torch.tensor([[{"+": 1, "0": 0, "-": -1}[c] for c in row] for row in AUTHORS_CODES], dtype=torch.int8)
    q = TernaryWeightQuantizer()
    frozen = q.freeze(w)
    assert torch.equal(frozen.codes, codes)
    assert torch.allclose(frozen.scale, torch.full_like(frozen.scale, AUTHORS_GAMMA), rtol=1e-7)
    assert torch.allclose(q(w), codes.float() * AUTHORS_GAMMA, rtol=1e-7)
    assert torch.equal(q(w), frozen.dequantize())
    wv = w.clone().requires_grad_()
    (q(wv) * golden.wave(8, 16, a=0.53)).sum().backward()
    assert torch.equal(wv.grad, golden.wave(8, 16, a=0.53))  # straight-through


def test_zero_weight_matrix_stays_zero():
    q = TernaryWeightQuantizer()
    assert torch.equal(q(torch.zeros(4, 4)), torch.zeros(4, 4))  # γ clamped at ε: no division by zero


def test_activations_match_the_authors_activation_quant(golden):
    x = golden.wave(3, 16) * 2.0
    x[1] *= 0.01
    y = STEActQuantizer(act_spec(8, None))(x)
    assert torch.allclose(y, torch.tensor(AUTHORS_ACTS).reshape(3, 16), rtol=1e-6, atol=1e-9)
