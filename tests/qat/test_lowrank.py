"""Low-rank QAT (lrqat, l4q): golden values of each paper's equations, the phases' gradient flow (what trains gets a
gradient, what is frozen does not move), per-parameter learning rates, merge into integer codes, export."""

import copy

import pytest
import torch

from qscale.export import export_model, folder_bytes, load_quantized
from qscale.ptq import PTQConfig, quantize_model
from qscale.qat import QATRecipeConfig, convert, get_recipe, prepare, qat_finetune, quant_layers
from qscale.qat.lowrank import L4QOptions, L4QWeightQuantizer, LRQATWeightQuantizer
from qscale.quant import QuantizedLinear, QuantSpec
from qscale.train.engine import OptimConfig, lm_loss, make_optimizer, train_steps

CFGS = [
    QATRecipeConfig("lrqat", w_bits=3, group_size=32, rank=4),
    QATRecipeConfig("l4q", w_bits=4, group_size=32, rank=4),
    QATRecipeConfig("lrqat", w_bits=2, group_size=None, rank=2),
]


def test_lrqat_eq3_golden_phi_clipped_before_the_int8_fixed_point():
    # Re-derived by hand from LR-QAT eq. 3 (Bondarenko et al. 2024), independently of the implementation:
    # W0 = [0.75, -0.2, 0.1, -0.5], 4 bits, one group: s0 = 2*0.75/15 = 0.1, W0/s0 = [7.5, -2, 1, -5];
    # phi = clip(., -8, 7) = [7, -2, 1, -5] (Q4.4: 112, -32, 16, -80); (a/r)AB = [-0.6, 0.45, 0.2, -0.6]
    # -> u = [6.4, -1.55, 1.2, -5.6] -> codes [6, -2, 1, -6] -> W = [0.6, -0.2, 0.1, -0.6].
    # Without the clip phi(7.5) - 0.6 = 6.9 rounds to 7 (W[0] = 0.7).
    w = torch.tensor([[0.75, -0.2, 0.1, -0.5]])
    q = LRQATWeightQuantizer(w, QuantSpec(4, True, "group", 4), rank=1, alpha=1.0)
    assert q.w0_fixed.tolist() == [[112, -32, 16, -80]]
    with torch.no_grad():
        q.A.fill_(1.0)
        q.B.copy_(torch.tensor([[-0.6, 0.45, 0.2, -0.6]]))
    out = q(None)
    assert torch.allclose(out, torch.tensor([[0.6, -0.2, 0.1, -0.6]]), atol=1e-6)
    out.sum().backward()
    assert float(q.scale.grad) == pytest.approx(-1.0)  # dW/ds = codes, summed: 6 - 2 + 1 - 6
    assert float(q.A.grad) == pytest.approx(0.1 * (-0.6 + 0.45 + 0.2 - 0.6), abs=1e-6)  # s * sum(B), STE inside
    assert torch.equal(q.freeze(None).dequantize(), q(None).detach())


def test_lrqat_scales_learn_at_the_authors_ratio_of_the_factors_rate(llama, batches):
    cfg = QATRecipeConfig("lrqat", w_bits=4, group_size=32, rank=4)
    prepare(llama, cfg)
    opt = make_optimizer(llama, OptimConfig(lr=1e-3))
    scales = {id(m.weight_quantizer.scale) for m in quant_layers(llama).values()}
    factors = {id(m.weight_quantizer.A) for m in quant_layers(llama).values()}
    train_steps(llama, batches, OptimConfig(lr=1e-3), 1, opt=opt)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert [lr_of[i] for i in scales] == pytest.approx([1e-5] * len(scales))  # the authors': 1e-5 for s, 1e-3 for A, B
    assert [lr_of[i] for i in factors] == pytest.approx([1e-3] * len(factors))


def test_low_rank_layers_of_the_same_shape_start_from_different_B(llama):
    for recipe in ("lrqat", "l4q"):
        model = copy.deepcopy(llama)
        prepare(model, QATRecipeConfig(recipe, w_bits=4, group_size=32, rank=4))
        layers = quant_layers(model)
        same = [
            layers[f"model.layers.{i}.mlp.{p}"].weight_quantizer.B for i in (0, 1) for p in ("gate_proj", "up_proj")
        ]
        for i, a in enumerate(same):
            for b in same[i + 1 :]:
                assert not torch.equal(a, b), recipe


# Golden values: an independent autograd re-derivation of L4Q's joint stage (LSQ+ on W0 + l*A@B with LSQ's
# gradient scale on s and beta, straight-through rounding) and of its warm-up stage (Q(W0; s, beta) + l*A@B),
# float64, written in a scratch folder from the paper's equations (no qscale code); 3 bits, one group per row.
# No code from the L4Q authors could be found; the joint-stage numbers also agree (to 1e-15) with an unattributed
# public L4Q-style autograd function (``LSQP_WQuantizer``, found by code search) run in the same scratch folder.
W0 = [[0.30, -0.12, 0.05, 0.41], [-0.27, 0.18, -0.36, 0.09]]
A0, B0 = [[0.10, -0.20], [0.05, 0.15]], [[0.30, -0.10, 0.20, 0.05], [-0.25, 0.40, 0.10, -0.30]]
S0, BETA0 = [[0.07], [0.09]], [[0.01], [-0.02]]
G = [[1.0, -2.0, 0.5, 3.0], [-1.5, 0.25, 2.0, -0.75]]
JOINT = {
    "W": [0.22, -0.27, 0.08, 0.22, -0.29, 0.25, -0.29, -0.02],
    "A": [0.2, 0.1, -0.175, 1.6],
    "B": [-0.15, 0.0, 0.3, -0.075, -0.45, 0.0, 0.4, -0.225],
    "step": [5.835361649309433, 0.2846657577254402],
    "offset": [0.5773502691896258, 0.07216878364870333],
}
WARMUP = {
    "W": [0.38, -0.31, 0.08, 0.35, -0.335, 0.27, -0.33, -0.015],
    "A": [1.5, -3.8, -0.225, 1.8],
    "B": [0.05, -0.375, 0.3, 0.525, -0.85, 0.875, 0.4, -1.425],
}


def _l4q_golden_quantizer() -> L4QWeightQuantizer:
    q = L4QWeightQuantizer(torch.tensor(W0), QuantSpec(3, True, "group", 4, grid="full"), rank=2, alpha=4.0)
    with torch.no_grad():
        for p, v in ((q.A, A0), (q.B, B0), (q.step, S0), (q.offset, BETA0)):
            p.copy_(torch.tensor(v).reshape(p.shape))
    return q


@pytest.mark.parametrize("stage", ["joint", "warmup"])
def test_l4q_golden_forward_and_gradients(stage):
    q = _l4q_golden_quantizer()
    q.warmup = stage == "warmup"
    out = q(None)
    (out * torch.tensor(G)).sum().backward()
    want = JOINT if stage == "joint" else WARMUP
    assert out.flatten().tolist() == pytest.approx(want["W"], abs=1e-6)
    assert q.A.grad.flatten().tolist() == pytest.approx(want["A"], abs=1e-5)
    assert q.B.grad.flatten().tolist() == pytest.approx(want["B"], abs=1e-5)
    if stage == "joint":
        assert q.step.grad.flatten().tolist() == pytest.approx(want["step"], rel=1e-5)
        assert q.offset.grad.flatten().tolist() == pytest.approx(want["offset"], rel=1e-5)
    else:
        assert q.step.grad is None and q.offset.grad is None  # frozen in the warm-up: no gradient at all


def test_l4q_freezes_to_the_joint_stage_weight_with_its_offset():
    q = _l4q_golden_quantizer()
    qw = q.freeze(None)
    assert not qw.spec.symmetric and not qw.integer_zero  # a real-valued offset: zero points 4 - beta/s
    assert torch.allclose(qw.dequantize(), torch.tensor(JOINT["W"]).reshape(2, 4), atol=1e-6)


def _nonzero_grads(model, batch, names):
    model.zero_grad(set_to_none=True)
    lm_loss(model, batch)[0].backward()
    params = dict(model.named_parameters())
    return {n: params[n].grad is not None and bool(params[n].grad.abs().sum() > 0) for n in names}


def _train_phase(model, cfg, batches, opt, hooks, total, start, end):
    optim = OptimConfig(lr=1e-2)
    train_steps(model, batches, optim, total, opt=opt, start=start, end=end, hooks=hooks)


@pytest.mark.parametrize("recipe", ["lrqat", "l4q"])
def test_gradient_flow_in_every_phase(llama, batches, recipe):
    """Each phase: what trains gets a non-zero gradient; what is frozen is bit-identical after several steps and
    has no optimizer state. l4q: warm-up (A, B only) for 4 of 8 steps, then the joint stage (A, B, s, beta)."""
    cfg = QATRecipeConfig(
        recipe, w_bits=4, group_size=32, rank=4, options=L4QOptions(warmup_fraction=0.5) if recipe == "l4q" else None
    )
    prepare(llama, cfg)
    hooks = get_recipe(recipe).hooks(llama, cfg, None)
    opt = make_optimizer(llama, OptimConfig(lr=1e-2))
    params = dict(llama.named_parameters())
    quant = {n for n in params if ".weight_quantizer." in n}
    trained = {"lrqat": ("A", "B", "scale"), "l4q": ("A", "B", "step", "offset")}[recipe]
    assert {n for n, p in params.items() if p.requires_grad} == {n for n in quant if n.rsplit(".", 1)[1] in trained}
    phases = [("warmup", 0, 4), ("joint", 4, 8)] if recipe == "l4q" else [("all", 0, 8)]
    for phase, start, end in phases:
        frozen = {
            n for n in params if n not in quant or (phase == "warmup" and n.rsplit(".", 1)[1] in ("step", "offset"))
        }
        before = {n: params[n].detach().clone() for n in params}
        buffers = {n: b.clone() for n, b in llama.named_buffers() if n.endswith(("w0", "w0_fixed"))}
        _train_phase(llama, cfg, batches, opt, hooks, 8, start, end)
        for n in frozen:
            assert torch.equal(params[n], before[n]), (phase, n)
            assert params[n] not in opt.state, (phase, n)
        for n in set(params) - frozen:
            assert not torch.equal(params[n], before[n]), (phase, n)
        assert all(torch.equal(b, buffers[n]) for n, b in llama.named_buffers() if n in buffers)
        if phase == "warmup":
            for q in hooks.quantizers:
                q.warmup = True
        grads = _nonzero_grads(llama, batches(99), sorted(set(params) - frozen))
        for q in getattr(hooks, "quantizers", []):
            q.warmup = False
        assert all(grads.values()), (phase, [n for n, ok in grads.items() if not ok])


@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: c.label)
def test_trains_and_merges_exactly(llama, batches, cfg):
    losses = qat_finetune(llama, cfg, batches, steps=15, lr=2e-2, warmup_steps=2)
    assert losses[-1] < losses[0]
    assert all(layer.weight is None for layer in quant_layers(llama).values())  # W0 only inside the quantizer
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        unmerged = llama(input_ids=ids).logits
    convert(llama)
    with torch.no_grad():  # l4q: codes - (2^(b-1) - beta/s) times s is beta up to float rounding
        merged = llama(input_ids=ids).logits
    assert torch.equal(merged, unmerged) if cfg.recipe == "lrqat" else torch.allclose(merged, unmerged, atol=1e-5)
    layers = [m for m in llama.modules() if isinstance(m, QuantizedLinear)]
    assert layers and not any(hasattr(m, "A") for m in layers)


def test_exported_low_rank_model_is_no_larger_than_ptq(llama, batches, tmp_path):
    ptq = copy.deepcopy(llama)
    quantize_model(ptq, PTQConfig("rtn", QuantSpec(4, True, "group", 32)), None)
    export_model(ptq, tmp_path / "ptq", "compressed-tensors")
    for recipe, fmt in (("lrqat", "compressed-tensors"), ("l4q", "qscale")):  # l4q's real-valued offsets: qscale only
        model = copy.deepcopy(llama)
        qat_finetune(model, QATRecipeConfig(recipe, w_bits=4, group_size=32, rank=8), batches, steps=3, lr=1e-3)
        convert(model)
        export_model(model, tmp_path / recipe, fmt)
        assert folder_bytes(tmp_path / recipe) <= folder_bytes(tmp_path / "ptq") * (1.25 if fmt == "qscale" else 1)
        back = load_quantized(tmp_path / recipe)
        ids = torch.randint(0, 64, (1, 8))
        with torch.no_grad():
            assert torch.equal(back(input_ids=ids).logits, model(input_ids=ids).logits)
    with pytest.raises(Exception, match="not integers"):
        export_model(model, tmp_path / "l4q-ct", "compressed-tensors")


def test_low_rank_recipes_are_weight_only():
    with pytest.raises(Exception, match="weight-only"):
        QATRecipeConfig("lrqat", a_bits=4)
    with pytest.raises(Exception, match="rank"):
        QATRecipeConfig("l4q", rank=0)
    with pytest.raises(Exception, match="warmup_fraction"):
        L4QOptions(warmup_fraction=1.0)


def test_l4q_freeze_equals_the_forward_when_a_step_went_negative():
    # LSQ quantizes with |s| (an optimizer can drive s through zero); the frozen codes must use the same |s|.
    w = torch.linspace(-1, 1, 64).reshape(2, 32)
    q = L4QWeightQuantizer(w, QuantSpec(4, True, "group", 32, grid="full"), rank=2, alpha=2.0)
    with torch.no_grad():
        q.step.neg_()
        q.offset.fill_(0.03)
        q.B.fill_(0.01)
        assert torch.allclose(q.freeze(None).dequantize(), q(None), atol=1e-6)
