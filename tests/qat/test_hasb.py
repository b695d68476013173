"""Double Rounding's mixed precision: Hutchinson traces, HASB (Algorithm 1) and the sub-network ILP (Algorithm 2),
each against an independent derivation (exact Hessian, the algorithm's two cases by hand, brute-force search)."""

import copy
import itertools
import math

import pytest
import torch

from qscale.errors import QscaleError
from qscale.qat import QATRecipeConfig, prepare
from qscale.qat.finetune import lm_loss
from qscale.qat.hasb import hasb_finetune, hasb_probabilities, hessian_traces, sample_bits, search_subnets

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


def test_algorithm_a3_spins_the_roulette_with_probability_sigma_else_keeps_the_pass_width():
    probs = hasb_probabilities({"flat": 0.0, "sharp": 1.0}, BITS)  # flat uniform, sharp b/20
    gen = torch.Generator().manual_seed(1)
    assert all(sample_bits(probs, BITS, gen, base=6, sigma=0.0) == {"flat": 6, "sharp": 6} for _ in range(50))
    draws = [sample_bits(probs, BITS, gen, base=2, sigma=0.5) for _ in range(6000)]
    # P(width 2) = (1 − σ) + σ·p(2): flat 0.5 + 0.5·0.25, sharp 0.5 + 0.5·0.1; P(8) = σ·p(8)
    assert sum(d["flat"] == 2 for d in draws) / 6000 == pytest.approx(0.625, abs=0.02)
    assert sum(d["sharp"] == 2 for d in draws) / 6000 == pytest.approx(0.55, abs=0.02)
    assert sum(d["sharp"] == 8 for d in draws) / 6000 == pytest.approx(0.2, abs=0.02)


def test_algorithm_1_training_on_real_traces_lowers_the_loss(llama, batches):
    model = prepare(copy.deepcopy(llama), QATRecipeConfig("double-rounding", group_size=16))
    names = [n for n, m in model.named_modules() if hasattr(m, "weight_quantizer")]
    fp = copy.deepcopy(llama).train()
    traces = hessian_traces(
        lambda: lm_loss(fp, batches(0))[0], {n: fp.get_submodule(n).weight for n in names}, samples=2
    )
    assert all(math.isfinite(t) for t in traces.values())
    probs = hasb_probabilities(traces, BITS)
    assert 0 < sum(bool(p[-1] > 0.3) for p in probs.values()) < len(probs)  # some layers sensitive, some not
    losses = hasb_finetune(model, batches, steps=10, lr=3e-3, probs=probs)
    assert len(losses) == 10 * len(BITS)  # one pass per width per iteration (Algorithm A.3)
    assert sum(losses[-8:]) < sum(losses[:8])


def _best(weights, total, fixed=None):
    """Brute force: the widths (one per layer) of sum ``total`` maximising Σ w·b, with one layer's width forced."""
    best = (-math.inf, None)
    for combo in itertools.product(sorted(BITS), repeat=len(weights)):
        if sum(combo) == total and (fixed is None or combo[fixed[0]] == fixed[1]):
            best = max(best, (sum(w * b for w, b in zip(weights, combo, strict=True)), combo))
    return best[1]


def test_algorithm_2_ilp_solutions_are_the_brute_force_optima():
    g = torch.Generator().manual_seed(0)
    for trial in range(4):
        names = [f"l{i}" for i in range(4)]
        traces = {n: float(torch.rand(1, generator=g)) * 10 for n in names}
        sizes = {n: int(torch.randint(10, 100, (1,), generator=g)) for n in names}
        avg = [3.0, 4.0, 5.0, 6.5][trial]
        weights = [traces[n] / sizes[n] for n in names]
        found = [tuple(s[n] for n in names) for s in search_subnets(traces, sizes, BITS, avg)]
        first = _best(weights, avg * 4)
        expected = [first]  # then each layer forced to each narrower width than the first solution's widest
        for i, c in enumerate(first):
            for b in sorted(BITS):
                if b < max(first) and b != c:
                    alt = _best(weights, avg * 4, (i, b))
                    if alt is not None and alt not in expected:
                        expected.append(alt)
        assert found == expected, trial
        assert all(sum(s) == avg * 4 for s in found)


def test_algorithm_2_gives_sensitive_layers_more_bits_and_refuses_impossible_averages(llama):
    model = prepare(llama, QATRecipeConfig("double-rounding", group_size=16))
    sizes = {n: m.weight.numel() for n, m in model.named_modules() if hasattr(m, "weight_quantizer")}
    traces = {n: 1.0 + i for i, n in enumerate(sizes)}
    assert set(search_subnets(traces, sizes, BITS, 8.0)[0].values()) == {8}
    assert set(search_subnets(traces, sizes, BITS, 2.0)[0].values()) == {2}
    first = search_subnets({"a": 1.0, "b": 100.0}, {"a": 10, "b": 10}, BITS, 5.0)[0]
    assert first == {"a": 2, "b": 8}  # the sensitive layer gets the widest width
    with pytest.raises(QscaleError, match="average width"):
        search_subnets(traces, sizes, BITS, 1.0)


# Golden numbers: HASB's sampling probabilities (Algorithm 1: a layer whose Hessian trace is below the mean of all
# layers' traces samples uniformly from B, every other layer b with p(b) = b/‖B‖₁), over the ascending widths, from a
# scratch numpy script outside the project (sha1 72821e04), written from the paper (Huang et al. 2025, arXiv
# 2502.01199), not from qscale: haiduo/Double-Rounding (through f730312) holds no code. Traces 0.31, 2.7, −0.05, 1.9,
# 4.4 (mean 1.852: "d" = 1.9 just above it).
GOLDEN_HASB_TRACES = {"a": 0.31, "b": 2.7, "c": -0.05, "d": 1.9, "e": 4.4}
GOLDEN_HASB = {
    (8, 6, 4, 2): ([0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]),
    (8, 4, 3, 2): ([0.25, 0.25, 0.25, 0.25], [0.11764705882352941, 0.17647058823529413, 0.23529411764705882,
                                              0.47058823529411764]),
}  # fmt: skip


def test_golden_hasb_algorithm_1_probabilities():
    for bits, (uniform, proportional) in GOLDEN_HASB.items():
        probs = hasb_probabilities(GOLDEN_HASB_TRACES, bits)
        for n in "ac":
            assert probs[n].tolist() == pytest.approx(uniform, rel=1e-15), (bits, n)
        for n in "bde":
            assert probs[n].tolist() == pytest.approx(proportional, rel=1e-15), (bits, n)
