"""GAQAT: SAM step, per-layer conflict cosines computed independently, exactly the conflicting layers frozen."""

import copy

import pytest
import torch

from qscale.errors import QscaleError
from qscale.qat import QATRecipeConfig, get_recipe, prepare, qat_finetune
from qscale.qat.finetune import lm_loss
from qscale.qat.gaqat import GAQATOptions, scale_params


def _cosine(a, b):
    a, b = torch.cat([x.reshape(-1) for x in a]).double(), torch.cat([x.reshape(-1) for x in b]).double()
    return float(a @ b / (a.norm() * b.norm()))


def test_freezes_exactly_the_layers_in_conflict(llama, batches):
    cfg = QATRecipeConfig("gaqat", w_bits=4, a_bits=4, group_size=32)
    prepare(llama, cfg)
    batch = batches(0)
    with torch.no_grad():
        llama(input_ids=batch[:, :-1])  # LSQ activation steps initialise on the first batch
    ref = copy.deepcopy(llama)
    # independent reference: task gradient, then the gradient at w + ρ·g/‖g‖
    params = [p for p in ref.parameters() if p.requires_grad]
    lm_loss(ref, batch)[0].backward()
    g = [p.grad.clone() for p in params]
    task = {n: [p.grad.clone() for p in ps] for n, ps in scale_params(ref).items()}
    norm = torch.sqrt(sum((x**2).sum() for x in g))
    with torch.no_grad():
        for p, x in zip(params, g):
            p.add_(0.05 * x / norm)
            p.grad = None
    lm_loss(ref, batch)[0].backward()
    sam = {n: [p.grad.clone() for p in ps] for n, ps in scale_params(ref).items()}
    cos = {n: _cosine(task[n], [s - t for s, t in zip(sam[n], task[n])]) for n in task}
    threshold = sorted(cos.values())[len(cos) // 2]  # about half the layers conflict
    expected = {n for n, c in cos.items() if c < threshold}
    assert 0 < len(expected) < len(cos)

    cfg = QATRecipeConfig("gaqat", w_bits=4, a_bits=4, group_size=32, options=GAQATOptions(0.05, threshold))
    hooks = get_recipe("gaqat").hooks(llama, cfg, None)
    hooks.backward(llama, batch, lambda b: lm_loss(llama, b)[0], 0, 1)
    assert hooks.frozen == expected
    for n, c in hooks.cosines.items():
        assert c == pytest.approx(cos[n], abs=1e-4)
    for n, ps in scale_params(llama).items():
        zero = all(bool((p.grad == 0).all()) for p in ps)
        assert zero == (n in expected), n
    # the update is SAM's: every other gradient is the one at the perturbed point
    ref_w = dict(ref.named_parameters())
    for n, p in llama.named_parameters():
        if p.requires_grad and n.endswith(".weight"):
            assert torch.allclose(p.grad, ref_w[n].grad, atol=1e-6), n


def test_gaqat_lowers_its_loss(llama, batches):
    losses = qat_finetune(llama, QATRecipeConfig("gaqat", w_bits=4, a_bits=4, group_size=32), batches, steps=15,
                          lr=1e-2, warmup_steps=2)
    assert losses[-1] < losses[0]


def test_gaqat_options_checked():
    with pytest.raises(QscaleError, match="rho"):
        GAQATOptions(rho=0)
    with pytest.raises(QscaleError, match="must be a GAQATOptions"):
        QATRecipeConfig("gaqat", options=object())
    with pytest.raises(QscaleError, match="takes no options"):
        QATRecipeConfig("lsq", options=GAQATOptions())
