"""PB-LLM against its equations (its authors' QAT code is not followed: see ``qscale.qat.pbllm``)."""

import torch

from qscale.qat.pbllm import PartialBinaryWeightQuantizer

# Golden values of PB-LLM's QAT forward (Shang et al. 2023, arXiv 2310.00034: salient weights by magnitude kept at
# 8 bits and frozen, the rest α·sign(w) with the L2-optimal α = mean|w| of the row's non-salient weights) written out
# in numpy in a scratch folder, independently of qscale, for w = golden.wave(2, 6, a=0.29, b=0.3)·0.05, r = 0.25.
PAPER_MASK = [0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0]
PAPER_W_HAT = [
    0.029671413,
    0.029671413,
    0.029671413,
    0.047039464,
    0.072853804,
    0.029671413,
    0.01741454,
    0.060920723,
    0.01741454,
    -0.01741454,
    0.01741454,
    -0.01741454,
]


def test_partial_binarization_matches_the_paper_equations(golden):
    w = torch.nn.Parameter(golden.wave(2, 6, a=0.29, b=0.3) * 0.05)
    q = PartialBinaryWeightQuantizer(w, 0.25)
    assert torch.equal(q.mask.flatten().int(), torch.tensor(PAPER_MASK, dtype=torch.int32))
    w_hat = q(w)
    assert torch.allclose(w_hat.detach().flatten(), torch.tensor(PAPER_W_HAT), rtol=1e-6, atol=1e-9)
    w_hat.sum().backward()
    assert torch.equal(w.grad.flatten(), 1.0 - torch.tensor(PAPER_MASK, dtype=torch.float32))  # salient: frozen
