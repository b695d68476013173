"""Double Rounding: the training forward is the switched integer model, ALRS scales the scales' gradients by
2^(b−h), joint training lowers every precision's loss, HASB samples by Hessian-trace sensitivity."""

import copy
import math

import pytest
import torch

from qscale.errors import QscaleError
from qscale.export import export_model, load_quantized
from qscale.qat import QATRecipeConfig, convert, prepare
from qscale.qat.doublerounding import (
    DoubleRoundingWeightQuantizer,
    alrs_factor,
    hasb_finetune,
    hasb_probabilities,
    hessian_traces,
    joint_finetune,
    sample_bits,
    set_bits,
)
from qscale.qat.finetune import lm_loss
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


@pytest.mark.parametrize("bits", BITS)
def test_alrs_scales_each_precisions_scale_gradient_by_2_to_the_b_minus_h(bits):
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    r = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    grads = {}
    for alrs in (False, True):
        q = DoubleRoundingWeightQuantizer(w, SPEC)
        q.bits, q.alrs = bits, alrs
        w.grad = None
        (q(w) * r).sum().backward()
        grads[alrs] = (q.scale.grad.clone(), w.grad.clone())
    assert alrs_factor(bits, 8) == 2.0 ** (bits - 8)
    assert torch.allclose(grads[True][0], grads[False][0] * 2.0 ** (bits - 8), rtol=1e-6, atol=0)
    assert torch.equal(grads[True][1], grads[False][1]) and grads[False][0].abs().sum() > 0


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


def test_hutchinson_trace_matches_the_exact_hessian_trace():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randn(64, 3, generator=g)
    w = torch.randn(3, 6, generator=g).requires_grad_(True)
    est = hessian_traces(lambda: ((x @ w.t() - y) ** 2).sum() / 64, {"w": w}, samples=400)["w"]
    exact = 3 * 2 / 64 * float((x**2).sum())  # H = I_3 ⊗ (2/N) XᵀX
    assert est == pytest.approx(exact, rel=0.05)


def test_hasb_probabilities_follow_the_hessian_trace_and_the_sampler_follows_them(llama, batches):
    traces = {"flat": 0.01, "mid": 1.0, "sharp": 100.0}
    probs = hasb_probabilities(traces, BITS)
    widths = torch.tensor(sorted(BITS), dtype=torch.float64)
    expected = {n: float((p * widths).sum()) for n, p in probs.items()}
    assert expected["flat"] < expected["mid"] < expected["sharp"]
    assert torch.allclose(probs["mid"], torch.full((4,), 0.25, dtype=torch.float64))
    assert all(abs(float(p.sum()) - 1) < 1e-12 for p in probs.values())
    assert probs["sharp"][-1] > probs["sharp"][0] and probs["flat"][0] > probs["flat"][-1]
    gen = torch.Generator().manual_seed(0)
    draws = [sample_bits(probs, BITS, gen)["sharp"] for _ in range(4000)]
    for k, b in enumerate(sorted(BITS)):
        assert draws.count(b) / 4000 == pytest.approx(float(probs["sharp"][k]), abs=0.03)

    model = prepare(copy.deepcopy(llama), QATRecipeConfig("double-rounding", group_size=16))
    names = [n for n, m in model.named_modules() if hasattr(m, "weight_quantizer")]
    fp = copy.deepcopy(llama).train()
    params = {n: fp.get_submodule(n).weight for n in names}
    traces = hessian_traces(lambda: lm_loss(fp, batches(0))[0], params, samples=2)
    assert all(math.isfinite(t) and t != 0 for t in traces.values())
    losses = hasb_finetune(model, batches, steps=20, lr=3e-3, probs=hasb_probabilities(traces, BITS))
    assert sum(losses[-5:]) < sum(losses[:5])


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
