"""QuEST against its authors' quantizer: forward values, trust-estimator gradient, and a rotated layer."""

import torch

from qscale.qat import QATRecipeConfig, prepare
from qscale.qat.quest import quest_fake_quantize

# Golden values from IST-DASLab/QuEST @ c295afda142c03a89d2af04653881beccf459aa1,
# src/models/quantization/base_linear.py: ``TrustQuantizer`` and ``HalfHadamardTrustQuantizer`` copied verbatim into
# a scratch folder outside the project and run on CPU (the only change: the 128x128 Hadamard matrix built with
# scipy in float32, as fast_hadamard_transform needs CUDA), on the ``golden`` inputs below.
AUTHORS_ROWS = {
    4: [
        0.28324783,
        0.84974349,
        0.28324783,
        4.2487173,
        1.4162391,
        0.84974349,
        0.28324783,
        0.84974349,
        0.28324783,
        -0.84974349,
        -0.28324783,
        -0.28324783,
        -1.4162391,
        -0.84974349,
        -0.28324783,
        -0.84974349,
        -0.65523231,
        0.65523225,
        0.39313936,
        0.39313936,
        1.1794182,
        1.1794182,
        0.39313936,
        0.9173252,
        0.9173252,
        -0.39313936,
        -0.39313936,
        -0.13104646,
        -0.9173252,
        -1.441511,
        -0.65523231,
        -0.65523231,
    ],
    2: [
        0.84139246,
        0.84139246,
        0.84139246,
        2.5241773,
        0.84139246,
        0.84139246,
        0.84139246,
        0.84139246,
        0.84139246,
        -0.84139246,
        -0.84139246,
        -0.84139246,
        -0.84139246,
        -0.84139246,
        -0.84139246,
        -0.84139246,
        -0.38927567,
        0.38927567,
        0.38927567,
        0.38927567,
        1.167827,
        1.167827,
        0.38927567,
        1.167827,
        1.167827,
        -0.38927567,
        -0.38927567,
        -0.38927567,
        -1.167827,
        -1.167827,
        -0.38927567,
        -0.38927567,
    ],
}
AUTHORS_LAYER = {  # y = x·Wᵀ with both operands HalfHadamardTrustQuantizer(bits=4)'d, and its gradients
    "y": [1.7175963, 1.1293478, -0.74847698, -1.6230626, 0.29096478, 1.3771772, 0.84263182, -0.47243038],
    "gx_norm": [0.42918926, 0.64019287],
    "gx_dot": [0.88261414, -1.08714],
    "gw_norm": [14.469506, 5.651135, 3.6241362, 7.3101106],
    "gw_dot": [47.990494, -11.449429, -14.811994, -22.354944],
}


def test_rows_match_the_authors_trust_quantizer(golden):
    for bits, expected in AUTHORS_ROWS.items():
        x = golden.wave(2, 16)
        x[0, 3] = 6.0  # an outlier, clipped more than half a step: its gradient is dropped
        x.requires_grad_()
        up = golden.wave(2, 16, a=0.53, b=0.7)
        y = quest_fake_quantize(x, bits)
        (y * up).sum().backward()
        assert torch.allclose(y, torch.tensor(expected).reshape(2, 16), rtol=1e-6, atol=1e-7)
        trusted = torch.ones(2, 16, dtype=torch.bool)
        trusted[0, 3] = False  # the authors' mask |xq − x| <= std·α/(2^b − 1) drops exactly this one
        assert torch.equal(x.grad, torch.where(trusted, up, 0.0))


def test_rotated_layer_matches_the_authors_hadamard_trust_quantizers(golden):
    lin = torch.nn.Sequential(torch.nn.Linear(256, 4, bias=False))
    with torch.no_grad():
        lin[0].weight.copy_(golden.wave(4, 256, a=0.29, b=0.3) * 0.05)
    prepare(lin, QATRecipeConfig("quest", exclude=()))  # W4A4, Hadamard groups of 128 as the authors'
    x = golden.wave(2, 256).requires_grad_()
    y = lin(x)
    (y * golden.wave(2, 4, a=0.53, b=0.7)).sum().backward()
    w_grad = lin[0].weight.grad
    got = {
        "y": y.flatten(),
        "gx_norm": x.grad.norm(dim=-1),
        "gx_dot": (x.grad * golden.wave(2, 256, a=0.11)).sum(-1),
        "gw_norm": w_grad.norm(dim=-1),
        "gw_dot": (w_grad * golden.wave(4, 256, a=0.11)).sum(-1),
    }
    for key, expected in AUTHORS_LAYER.items():
        assert torch.allclose(got[key].detach(), torch.tensor(expected), rtol=2e-6, atol=1e-6), key
