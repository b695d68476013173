"""Double Rounding: the training forward is the switched integer model, ALRS gives each precision its own
learning rate on the scales (Eq. 6–7, derived by hand), joint training lowers every precision's loss and
resumes exactly. HASB and the sub-network ILP: tests/qat/test_hasb.py."""

import copy

import pytest
import torch

from qscale.errors import QscaleError
from qscale.export import export_model, load_quantized
from qscale.qat import QATRecipeConfig, convert, prepare
from qscale.qat.doublerounding import DoubleRoundingWeightQuantizer, alrs_eta, alrs_rate, joint_finetune, set_bits
from qscale.qat.finetune import lm_loss
from qscale.train.engine import OptimConfig
from qscale.quant import QuantSpec
from qscale.quant.switch import switch_bits

SPEC = QuantSpec(8, True, "group", 16)
BITS = (8, 6, 4, 2)


def test_forward_at_each_precision_is_the_switched_stored_codes():
    w = torch.randn(8, 48, generator=torch.Generator().manual_seed(0))
    q = DoubleRoundingWeightQuantizer(w, SPEC)
    with torch.no_grad():
        q.scale.mul_(1 + 0.1 * torch.rand(q.scale.shape, generator=torch.Generator().manual_seed(1)))
    stored = q.freeze(w)
    assert stored.spec.bits == 8 and stored.codes.dtype == torch.int8
    for b in BITS:
        q.bits = b
        assert torch.equal(q(w), switch_bits(stored, b).dequantize()), b


def test_alrs_eq6_rate_of_each_precision_by_hand():
    # Eq. 6: λ_b = η_b·(λ − (1/L)·Σ_i min(max|clip(∇s_b^i, 1)|, 1)), η = 1, 0.1, 0.01, 0.001 for 8/6/4/2 bits,
    # a scaling of the step's learning rate. Two layers: max|clip| = 1 (2.0 clipped) and 0.2, so the mean is
    # (1 + 0.2)/2 = 0.6; λ = 1: λ_b = 0.4·η_b; learning rate 1e-3.
    grads = [torch.tensor([0.3, -2.0]), torch.tensor([[0.05], [-0.2]])]
    assert [alrs_eta(b, 8) for b in BITS] == pytest.approx([1.0, 0.1, 0.01, 0.001])
    assert [alrs_rate(1e-3, b, 8, grads) for b in BITS] == pytest.approx([4e-4, 4e-5, 4e-6, 4e-7])
    assert alrs_rate(1e-3, 6, 8, grads, lam=2.0) == pytest.approx(1e-3 * 0.1 * 1.4)
    assert alrs_rate(1e-3, 8, 8, grads, lam=0.5) == 0.0  # negative by the formula: the scales stay


def test_alrs_eq7_each_precision_takes_its_own_adam_step_at_its_rate(llama, batches):
    """One joint step: the scales move by Σ_b λ_b·Adam_b(∇s_b) (first Adam step: ∇/(|∇| + ε)), each precision's
    gradient at the same point; the weights take one AdamW step on the summed gradient; every weight and scale
    gets a non-zero gradient at every precision (gradient flow)."""
    cfg = QATRecipeConfig("double-rounding", group_size=16)
    model = prepare(llama, cfg)
    ref = copy.deepcopy(model)
    names = [n for n, m in ref.named_modules() if hasattr(m, "weight_quantizer")]
    scales = [ref.get_submodule(n).weight_quantizer.scale for n in names]
    s0 = [s.detach().clone() for s in scales]
    lr = 1e-2
    lr0 = OptimConfig(lr=lr).lr_at(0, 1)  # the scheduled rate of the step
    step = [torch.zeros_like(s) for s in scales]
    for b in BITS:  # independent derivation: gradients of a copy, Eq. 6 by hand, Adam's first step
        ref.zero_grad()
        set_bits(ref, b)
        lm_loss(ref, batches(0))[0].backward()
        assert all(bool(s.grad.abs().sum() > 0) for s in scales), b
        assert all(bool(ref.get_submodule(n).weight.grad.abs().sum() > 0) for n in names), b
        g = [s.grad.clone() for s in scales]
        rate = lr0 * 10 ** ((b - 8) / 2) * (1 - sum(min(float(x.clamp(-1, 1).abs().max()), 1) for x in g) / len(g))
        assert rate > 0
        for d, x in zip(step, g):
            d.add_(rate * x / (x.abs() + 1e-8))
    joint_finetune(model, batches, steps=1, lr=lr, bits=BITS, grad_clip=0.0)
    got = [model.get_submodule(n).weight_quantizer.scale.detach() for n in names]
    for n, a, s, d in zip(names, got, s0, step):
        assert torch.allclose(a, s - d, rtol=1e-5, atol=1e-7), n


def test_alrs_off_steps_the_scales_with_the_summed_gradient(llama, batches):
    model = prepare(llama, QATRecipeConfig("double-rounding", group_size=16))
    ref = copy.deepcopy(model)
    for b in BITS:
        set_bits(ref, b)
        lm_loss(ref, batches(0))[0].backward()
    names = [n for n, m in ref.named_modules() if hasattr(m, "weight_quantizer")]
    joint_finetune(model, batches, steps=1, lr=1e-2, bits=BITS, alrs=False, grad_clip=0.0)
    for n in names:
        s, g = ref.get_submodule(n).weight_quantizer.scale, ref.get_submodule(n).weight_quantizer.scale.grad
        expected = s - 1e-2 * OptimConfig(lr=1.0).lr_at(0, 1) * g / (g.abs() + 1e-8)
        assert torch.allclose(model.get_submodule(n).weight_quantizer.scale, expected, rtol=1e-5, atol=1e-7), n


def test_joint_training_lowers_every_precision_and_one_stored_model_serves_them(llama, batches, tmp_path):
    model = prepare(llama, QATRecipeConfig("double-rounding", group_size=16))
    eval_batch = batches(999)

    def losses():
        out = {}
        with torch.no_grad():
            for b in BITS:
                set_bits(model, b)
                out[b] = float(lm_loss(model, eval_batch)[0])
        set_bits(model, 8)
        return out

    before = losses()
    joint_finetune(model, batches, steps=30, lr=3e-3, bits=BITS)
    after = losses()
    assert all(after[b] < before[b] - 0.1 for b in BITS), (before, after)
    model.eval()
    logits = {}
    with torch.no_grad():
        for b in BITS:
            set_bits(model, b)
            logits[b] = model(input_ids=eval_batch[:, :-1]).logits
    convert(model)
    export_model(model, tmp_path / "dr", "qscale")
    for b in BITS:
        served = load_quantized(tmp_path / "dr", bits=b)
        with torch.no_grad():
            assert torch.allclose(served(input_ids=eval_batch[:, :-1]).logits, logits[b], atol=1e-4), b


def test_recipe_refuses_quantized_activations():
    with pytest.raises(QscaleError, match="activations"):
        QATRecipeConfig("double-rounding", a_bits=8)


def test_joint_training_resumes_to_the_same_model(llama, batches, tmp_path):
    cfg = QATRecipeConfig("double-rounding", group_size=16)
    whole = prepare(copy.deepcopy(llama), cfg)
    ref = joint_finetune(whole, batches, steps=4, lr=1e-3, bits=(8, 4))

    def dies_at_3(step):
        if step == 3:
            raise KeyboardInterrupt
        return batches(step)

    cut = prepare(copy.deepcopy(llama), cfg)
    with pytest.raises(KeyboardInterrupt):
        joint_finetune(cut, dies_at_3, steps=4, lr=1e-3, bits=(8, 4), state_dir=tmp_path / "s", save_every=2)
    again = prepare(copy.deepcopy(llama), cfg)
    got = joint_finetune(again, batches, steps=4, lr=1e-3, bits=(8, 4), state_dir=tmp_path / "s", save_every=2)
    assert got == ref
    for (n, a), (_, b) in zip(whole.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
