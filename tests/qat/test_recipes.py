import torch

from qscale.qat.bitnet import TernaryWeightQuantizer
from qscale.qat.pbllm import PartialBinaryWeightQuantizer, salient_mask
from qscale.qat.quest import QUEST_ALPHA, QuestWeightQuantizer, quest_fake_quantize


def test_bitnet_weights_ternary_times_absmean():
    torch.manual_seed(0)
    w = torch.randn(32, 64) * 0.02
    q = TernaryWeightQuantizer()
    w_hat = q(w)
    gamma = w.abs().mean()
    levels = w_hat / gamma
    assert torch.allclose(levels, levels.round(), atol=1e-6)
    assert set(levels.round().unique().tolist()) == {-1.0, 0.0, 1.0}
    frozen = q.freeze(w)
    assert set(frozen.codes.unique().tolist()) == {-1, 0, 1}
    assert frozen.spec.bits == 2 and frozen.spec.symmetric and frozen.layout == "uniform"
    assert torch.equal(frozen.dequantize(), w_hat)
    # RoundClip(W/γ): zero exactly where |w| < γ/2, ±1 elsewhere
    assert torch.equal(frozen.codes == 0, w.abs() < gamma / 2)


def test_pbllm_exact_salient_fraction_binary_rest_and_frozen():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(20, 50))
    for r in (0.0, 0.05, 0.1, 0.333):
        assert int(salient_mask(w, r).sum()) == round(r * w.numel())
    q = PartialBinaryWeightQuantizer(w, 0.1)
    mask = q.mask
    assert int(mask.sum()) == 100
    assert w.detach().abs()[mask].min() >= w.detach().abs()[~mask].max()  # by magnitude
    w_hat = q(w)
    alpha = (w.detach().abs() * ~mask).sum(1, keepdim=True) / (~mask).sum(1, keepdim=True)
    expected_bin = torch.where(w.detach() >= 0, 1.0, -1.0) * alpha
    assert torch.allclose(w_hat[~mask], expected_bin.expand_as(w)[~mask])
    rowmax = (w.detach().abs() * mask).amax(1, keepdim=True)
    assert torch.all((w_hat - w.detach()).abs()[mask] <= (rowmax / 127 / 2).expand_as(w)[mask] + 1e-7)  # 8 bits
    # salient weights frozen: zero gradient there, and an optimizer step with weight decay cannot move them
    opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.5)
    (q(w) * torch.randn(20, 50)).sum().backward()
    assert torch.all(w.grad[mask] == 0) and torch.all(w.grad[~mask] != 0)
    opt.step()
    assert torch.equal(q(w)[mask], w_hat[mask])
    assert torch.equal(q.freeze(w).dequantize(), q(w))
    assert q.freeze(w).layout == "partial-binary"


def test_quest_grid_no_zero_level_and_rms_scale():
    torch.manual_seed(0)
    x = torch.randn(64, 256)
    for bits in (1, 2, 4):
        q = QuestWeightQuantizer(bits)
        frozen = q.freeze(x)
        step = frozen.scale
        rms = x.pow(2).mean(-1, keepdim=True).sqrt()
        assert torch.allclose(step, 2 * QUEST_ALPHA[bits] * rms / (2**bits - 1))
        levels = q(x) / step  # odd multiples of 1/2 in [-(2^b-1)/2, (2^b-1)/2]
        assert torch.allclose(levels * 2, (levels * 2).round(), atol=1e-4)
        assert torch.all((levels * 2).round().remainder(2) == 1)
        assert levels.abs().max() <= (2**bits - 1) / 2 + 1e-5
        assert torch.equal(frozen.dequantize(), q(x))


def test_quest_alpha_is_mse_optimal_for_gaussian():
    """The table's α*(b) beats ±10 % of itself on N(0, 1) samples (checks both constants and grid)."""
    torch.manual_seed(0)
    x = torch.randn(1, 100_000, dtype=torch.float64)
    for bits in (1, 2, 3, 4):

        def mse(alpha, bits=bits):
            levels = 2**bits - 1
            step = 2 * alpha / levels
            k = torch.clamp(torch.round(x / step + levels / 2), 0, levels)
            return float(((k - levels / 2) * step - x).pow(2).mean())

        a = QUEST_ALPHA[bits]
        assert mse(a) < mse(0.9 * a) and mse(a) < mse(1.1 * a)
        # and our quantizer (RMS of these samples ~ 1) realises that grid
        ours = float((quest_fake_quantize(x, bits) - x).pow(2).mean())
        assert abs(ours - mse(a)) / mse(a) < 0.01


def test_quest_trust_estimator_mask():
    x = torch.cat([torch.randn(1, 255), torch.tensor([[40.0]])], 1).requires_grad_()
    y = quest_fake_quantize(x, 4)
    y.sum().backward()
    xd, yd = x.detach(), y.detach()
    step = 2 * QUEST_ALPHA[4] * xd.pow(2).mean().sqrt() / 15
    trusted = (yd - xd).abs() <= step / 2
    assert torch.equal(x.grad, trusted.float())
    assert x.grad[0, -1] == 0 and x.grad[0, :-1].sum() > 200
