"""Double Rounding's mixed precision: Hutchinson traces, HASB (Algorithm 1) and the sub-network ILP (Algorithm 2),
each against an independent derivation (exact Hessian, the algorithm's two cases by hand, brute force)."""

import copy
import itertools
import math

import pytest
import torch

from qscale.errors import QscaleError
from qscale.qat import QATRecipeConfig, prepare
from qscale.qat.finetune import lm_loss
from qscale.qat.hasb import (
    hasb_finetune,
    hasb_probabilities,
    hessian_traces,
    perturbations,
    sample_bits,
    search_subnet,
)

BITS = (8, 6, 4, 2)


def test_hutchinson_trace_matches_the_exact_hessian_trace():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randn(64, 3, generator=g)
    w = torch.randn(3, 6, generator=g).requires_grad_(True)
    est = hessian_traces(lambda: ((x @ w.t() - y) ** 2).sum() / 64, {"w": w}, samples=400)["w"]
    exact = 3 * 2 / 64 * float((x**2).sum())  # H = I_3 ⊗ (2/N) XᵀX
    assert est == pytest.approx(exact, rel=0.05)


def test_algorithm_1_uniform_below_the_mean_trace_else_b_over_the_l1_norm_of_B():
    traces = {"flat": 0.1, "mid": 1.2, "sharp": 5.0, "negative": -0.5}  # mean 1.45: only "sharp" is above
    probs = hasb_probabilities(traces, BITS)
    for n in ("flat", "mid", "negative"):
        assert probs[n].tolist() == pytest.approx([0.25] * 4)
    assert probs["sharp"].tolist() == pytest.approx([2 / 20, 4 / 20, 6 / 20, 8 / 20])  # widths 2, 4, 6, 8
    gen = torch.Generator().manual_seed(0)
    draws = [sample_bits(probs, BITS, gen) for _ in range(4000)]
    for n, p in (("sharp", [0.1, 0.2, 0.3, 0.4]), ("flat", [0.25] * 4)):
        freq = [sum(d[n] == b for d in draws) / 4000 for b in sorted(BITS)]
        assert freq == pytest.approx(p, abs=0.03), n
    with pytest.raises(QscaleError):
        hasb_probabilities({"a": math.nan}, BITS)


def test_algorithm_1_training_on_real_traces_lowers_the_loss(llama, batches):
    model = prepare(copy.deepcopy(llama), QATRecipeConfig("double-rounding", group_size=16))
    names = [n for n, m in model.named_modules() if hasattr(m, "weight_quantizer")]
    fp = copy.deepcopy(llama).train()
    traces = hessian_traces(lambda: lm_loss(fp, batches(0))[0], {n: fp.get_submodule(n).weight for n in names},
                            samples=2)
    assert all(math.isfinite(t) for t in traces.values())
    probs = hasb_probabilities(traces, BITS)
    assert 0 < sum(bool(p[-1] > 0.3) for p in probs.values()) < len(probs)  # some layers sensitive, some not
    losses = hasb_finetune(model, batches, steps=20, lr=3e-3, probs=probs)
    assert sum(losses[-5:]) < sum(losses[:5])


def _brute_force(traces, perturb, sizes, budget):
    names, best = list(traces), (math.inf, None)
    for combo in itertools.product(sorted(BITS), repeat=len(names)):
        if sum(sizes[n] * b for n, b in zip(names, combo)) <= budget:
            cost = sum(max(traces[n], 0) * perturb[n][b] for n, b in zip(names, combo))
            best = min(best, (cost, combo))
    return best


def test_algorithm_2_ilp_finds_the_brute_force_optimum():
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        names = [f"l{i}" for i in range(4)]
        traces = {n: float(torch.randn(1, generator=g)) * 3 + 1 for n in names}
        # perturbation falls about 4x per extra bit (RTN error ∝ 2^-b), times a layer-specific size
        perturb = {n: {b: float(torch.rand(1, generator=g) + 0.5) * 4.0 ** (-b) * 1e4 for b in BITS} for n in names}
        sizes = {n: int(torch.randint(10, 100, (1,), generator=g)) for n in names}
        budget = sum(sizes.values()) * (3 + trial)
        choice = search_subnet(traces, perturb, sizes, budget)
        cost = sum(max(traces[n], 0) * perturb[n][b] for n, b in choice.items())
        assert sum(sizes[n] * b for n, b in choice.items()) <= budget
        assert cost == pytest.approx(_brute_force(traces, perturb, sizes, budget)[0], rel=1e-9, abs=1e-12), trial


def test_algorithm_2_on_a_prepared_model(llama):
    model = prepare(llama, QATRecipeConfig("double-rounding", group_size=16))
    per = perturbations(model, BITS)
    assert all(per[n][8] < per[n][6] < per[n][4] < per[n][2] for n in per)
    sizes = {n: model.get_submodule(n).weight.numel() for n in per}
    traces = dict.fromkeys(per, 1.0)
    assert set(search_subnet(traces, per, sizes, 8 * sum(sizes.values())).values()) == {8}
    assert set(search_subnet(traces, per, sizes, 2 * sum(sizes.values())).values()) == {2}
    with pytest.raises(QscaleError, match="no sub-network fits"):
        search_subnet(traces, per, sizes, 1 * sum(sizes.values()))
