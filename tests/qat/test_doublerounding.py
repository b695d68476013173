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
from qscale.quant import QuantSpec
from qscale.quant.switch import switch_bits
from qscale.train.engine import OptimConfig

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


def test_alrs_eq6_eq7_rate_of_each_precision_by_hand():
    # Eq. 7: η = 10^(−Δ/2) for even Δ = h − b, 5·10^(−(Δ+1)/2) for odd Δ
    assert [alrs_eta(b, 8) for b in range(8, 1, -1)] == pytest.approx([1, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001])
    # Eq. 6, a scaling of the step's learning rate: λ_b = η_b·(λ − (1/L)·Σ_i min(max|clip(∇s_b^i, 1)|, 1)).
    # Two layers: max|clip| = 1 (2.0 clipped) and 0.2, so the mean is (1 + 0.2)/2 = 0.6; λ = 1: λ_b = 0.4·η_b.
    grads = [torch.tensor([0.3, -2.0]), torch.tensor([[0.05], [-0.2]])]
    assert [alrs_rate(1e-3, b, 8, grads) for b in BITS] == pytest.approx([4e-4, 4e-5, 4e-6, 4e-7])
    assert alrs_rate(1e-3, 6, 8, grads, lam=2.0) == pytest.approx(1e-3 * 0.1 * 1.4)
    assert alrs_rate(1e-3, 8, 8, grads, lam=0.5) == 0.0  # negative by the formula: the scales stay


def test_alrs_algorithm_a2_each_precision_updates_weights_then_scales_at_its_rate(llama, batches):
    """One iteration by hand (Algorithm A.2): for b in 8, 6, 4, 2: the loss at b, its gradients, an AdamW step of
    the weights at the step's rate, an AdamW step (one optimizer for all precisions, no weight decay) of the
    scales at the Eq. 6-7 rate; every weight and scale gets a non-zero gradient at every precision."""
    cfg = QATRecipeConfig("double-rounding", group_size=16)
    model = prepare(llama, cfg)
    ref = copy.deepcopy(model)
    names = [n for n, m in ref.named_modules() if hasattr(m, "weight_quantizer")]
    scales = [ref.get_submodule(n).weight_quantizer.scale for n in names]
    weights = [p for p in ref.parameters() if all(p is not s for s in scales)]
    w_opt = torch.optim.AdamW(weights, lr=1.0, betas=(0.9, 0.95), weight_decay=0.0)
    s_opt = torch.optim.AdamW(scales, lr=1.0, betas=(0.9, 0.95), weight_decay=0.0)
    lr = 1e-3
    for k, b in enumerate(BITS):
        ref.zero_grad()
        set_bits(ref, b)
        lm_loss(ref, batches(0))[0].backward()
        assert all(bool(s.grad.abs().sum() > 0) for s in scales), b
        assert all(bool(ref.get_submodule(n).weight.grad.abs().sum() > 0) for n in names), b
        lr_k = OptimConfig(lr=lr).lr_at(k, len(BITS))  # the engine's schedule over the 4 precision steps
        mean = sum(min(float(s.grad.clamp(-1, 1).abs().max()), 1) for s in scales) / len(scales)
        w_opt.param_groups[0]["lr"] = lr_k
        s_opt.param_groups[0]["lr"] = lr_k * 10 ** ((b - 8) / 2) * (1 - mean)
        w_opt.step()
        s_opt.step()
    joint_finetune(model, batches, steps=1, lr=lr, bits=BITS, grad_clip=0.0)
    for (n, a), (_, e) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.allclose(a, e, rtol=1e-5, atol=1e-7), n


def test_alrs_off_is_algorithm_a1_one_step_on_the_summed_gradient(llama, batches):
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
    for (n, a), (_, b) in zip(whole.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


# Golden numbers: the Double Rounding quantizer (Huang et al. 2025, arXiv 2502.01199, Eq. 3-4: q_h = clamp(⌊W/s⌉),
# q_b = clamp(⌊q_h / 2^(h−b)⌉), Ŵ_b = q_b·s·2^(h−b)) computed by a scratch numpy script outside the project (sha1
# d35da214), written from the paper, not from qscale; the authors' repository holds no code to run.
# W_i = sin(1.7·i + 0.3)·(1 + 0.25·i), i = 0..15, as 2 x 8; group 4; steps 0.011, 0.023, 0.017, 0.031; h = 8.
GOLDEN_DR = {
    8: [0.297, 1.133, -0.792, -1.353, 1.449, 1.311, -2.208, -0.989, 2.159, 0.357, -2.176, 0.561, 3.844, -1.705, -3.875,
        2.945],
    6: [0.308, 1.144, -0.792, -1.364, 1.472, 1.288, -2.208, -1.012, 2.108, 0.34, -2.176, 0.544, 3.844, -1.736, -3.844,
        2.976],
    4: [0.352, 1.056, -0.704, -1.408, 1.472, 1.472, -2.208, -1.104, 1.904, 0.272, -2.176, 0.544, 3.472, -1.488, -3.968,
        2.976],
    3: [0.352, 1.056, -0.704, -1.408, 1.472, 1.472, -2.208, -0.736, 1.632, 0.544, -2.176, 0.544, 2.976, -1.984, -3.968,
        2.976],
    2: [0.0, 0.704, -0.704, -1.408, 1.472, 1.472, -2.944, -1.472, 1.088, 0.0, -2.176, 1.088, 1.984, -1.984, -3.968,
        1.984],
}  # fmt: skip


def test_golden_double_rounding_forward_at_each_precision():
    i = torch.arange(16, dtype=torch.float64)
    w = (torch.sin(1.7 * i + 0.3) * (1 + 0.25 * i)).reshape(2, 8)
    q = DoubleRoundingWeightQuantizer(w, QuantSpec(8, True, "group", 4)).double()
    with torch.no_grad():
        q.scale.copy_(torch.tensor([0.011, 0.023, 0.017, 0.031], dtype=torch.float64).reshape(q.scale.shape))
    for b, expected in GOLDEN_DR.items():
        q.bits = b
        assert q(w).reshape(-1).tolist() == pytest.approx(expected, abs=1e-12), b


# Golden numbers: ALRS learning rates lr·λ_b (Eq. 6, λ_b = η_b·(λ − (1/L)·Σ_i min(max|clip(∇s_b^i, 1)|, 1)), a negative
# bracket giving 0) with Eq. 7's η_b (10^(−Δ/2) for even Δ = h − b, 5·10^(−(Δ+1)/2) for odd Δ), h = 8, lr = 2e-3,
# computed by a scratch numpy script outside the project (sha1 72821e04), written from the paper (Huang et al. 2025,
# arXiv 2502.01199), not from qscale: the authors' repository haiduo/Double-Rounding holds no code to run (its stored
# history, through f730312, is README.md, two images and requirements.txt). Three layers' scale gradients: per-layer
# max|clip| 0.36907, 1 (clipped from 2.5), 0.021.
GOLDEN_ALRS = {
    1.0: {8: 0.001073284569971, 7: 0.0005366422849855, 6: 0.00010732845699709999, 5: 5.3664228498549996e-05,
          4: 1.0732845699709999e-05, 3: 5.3664228498549995e-06, 2: 1.073284569971e-06},
    1.5: {8: 0.002073284569971, 7: 0.0010366422849855, 6: 0.00020732845699710002, 5: 0.00010366422849855001,
          4: 2.073284569971e-05, 3: 1.0366422849855e-05, 2: 2.073284569971e-06},
    0.6: {8: 0.0002732845699709999, 7: 0.00013664228498549996, 6: 2.7328456997099993e-05, 5: 1.3664228498549997e-05,
          4: 2.7328456997099993e-06, 3: 1.3664228498549997e-06, 2: 2.732845699709999e-07},
    0.4: {8: 0.0, 4: 0.0},  # λ below the mean penalty 0.4636: the scales stay
}  # fmt: skip


def test_golden_alrs_rates_eq6_eq7():
    i = torch.arange(12, dtype=torch.float64)
    grads = [
        (0.37 * torch.sin(1.3 * i + 0.2)).reshape(4, 3),
        (2.5 * torch.cos(0.7 * i[:6] - 0.4)).reshape(6, 1),
        torch.tensor([[-0.013], [0.0042], [0.021]], dtype=torch.float64),
    ]
    for lam, rates in GOLDEN_ALRS.items():
        got = {b: alrs_rate(2e-3, b, 8, grads, lam) for b in rates}
        assert got == pytest.approx(rates, rel=1e-12, abs=1e-18), lam
