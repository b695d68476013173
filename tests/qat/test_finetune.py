import copy

import pytest
import torch

from qscale.errors import QscaleError
import qscale.qat.finetune as finetune_mod
from qscale.ptq.layers import find_blocks
from qscale.qat import DistillConfig, InterventionConfig, QATRecipeConfig, distill_loss, prepare, qat_finetune
from qscale.qat.finetune import qat_loss
from qscale.train.engine import logits_of

RUNS = [
    QATRecipeConfig("ste", w_bits=4, a_bits=4, group_size=32),
    QATRecipeConfig("lsq", w_bits=4, a_bits=4, group_size=32),
    QATRecipeConfig("lsq", w_bits=4, a_bits=4, group_size=32, lsq_plus=True),
    QATRecipeConfig("quest", w_bits=4, a_bits=4),
    QATRecipeConfig("bitnet"),
    QATRecipeConfig("pbllm", salient_fraction=0.1),
    QATRecipeConfig("ste", w_bits=4, a_bits=8, group_size=32, distill=DistillConfig(temperature=1.0, ce_weight=0.5)),
]


@pytest.mark.parametrize("cfg", RUNS, ids=lambda c: c.label + ("-distill" if c.distill else ""))
def test_tiny_qat_run_lowers_training_loss(llama, batches, cfg):
    losses = qat_finetune(llama, cfg, batches, steps=30, lr=3e-3, warmup_steps=3)
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, (first, last)


def test_distill_loss_definition():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    ce = torch.nn.functional.cross_entropy(s.reshape(-1, 11), labels.reshape(-1))
    assert torch.allclose(distill_loss(s, s, labels, DistillConfig(ce_weight=1.0)), ce, atol=1e-6)  # KL(p||p) = 0
    temp = 2.0
    p_t, p_s = torch.softmax(t / temp, -1), torch.softmax(s / temp, -1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    loss = distill_loss(s, t, labels, DistillConfig(temperature=temp, ce_weight=0.0))
    assert torch.allclose(loss, kl * temp**2, atol=1e-6)


def test_distill_uses_the_teacher(llama, batches):
    teacher = copy.deepcopy(llama)
    cfg = QATRecipeConfig("ste", distill=DistillConfig(ce_weight=0.0))
    losses = qat_finetune(llama, cfg, batches, steps=1, lr=1e-9, teacher=teacher)
    assert 0 < losses[0] < 0.5  # a tiny quantization gap to the copy of itself, not a CE of ~ln 64


def test_intervention_finetune_lowers_loss_and_ends_without_teacher_signal(llama, batches, monkeypatch):
    cfg = QATRecipeConfig("ste", w_bits=2, a_bits=16, group_size=32, intervention=InterventionConfig(handback=0.5))
    firsts, real = [], finetune_mod.intervene

    def spy(model, seen, first):
        firsts.append(first)
        return real(model, seen, first)

    monkeypatch.setattr(finetune_mod, "intervene", spy)
    losses = qat_finetune(llama, cfg, batches, steps=30, lr=3e-3, warmup_steps=3)
    n = len(find_blocks(llama)[1])
    assert len(losses) == 30 and len(firsts) == 30
    assert firsts[0] == 1 and firsts == sorted(firsts) and firsts[-1] == n  # all blocks intervened, then none
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_intervention_loss_feeds_the_teacher_only_while_intervening(llama, batches):
    teacher = copy.deepcopy(llama)
    prepare(llama, QATRecipeConfig("ste", w_bits=2, a_bits=16, group_size=32))
    cfg = QATRecipeConfig("ste", w_bits=2, a_bits=16, group_size=32, intervention=InterventionConfig(handback=1.0))
    loss, batch, steps = qat_loss(cfg, teacher, steps=10), batches(0), 10
    with torch.no_grad():
        plain = distill_loss(logits_of(llama, batch[:, :-1]), logits_of(teacher, batch[:, :-1]), batch[:, 1:],
                             DistillConfig())
        assert torch.equal(loss(llama, batch, steps - 1), plain)  # last step: the student's own forward
        assert not torch.allclose(loss(llama, batch, 0), plain)  # first step: teacher inputs replace its own


class _Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_weights(llama, batches, tmp_path):
    cfg = QATRecipeConfig("lsq", w_bits=4, a_bits=4, group_size=32)
    whole = copy.deepcopy(llama)
    ref = qat_finetune(whole, cfg, batches, steps=8, lr=1e-3, state_dir=tmp_path / "a", save_every=3, fingerprint="x")

    def dies_at_7(step):
        if step == 7:
            raise _Killed
        return batches(step)

    first = copy.deepcopy(llama)
    with pytest.raises(_Killed):
        qat_finetune(first, cfg, dies_at_7, steps=8, lr=1e-3, state_dir=tmp_path / "b", save_every=3, fingerprint="x")
    again = copy.deepcopy(llama)  # a new process: the fp model again, then the saved state (step 6)
    losses = qat_finetune(again, cfg, batches, steps=8, lr=1e-3, state_dir=tmp_path / "b", save_every=3, fingerprint="x")
    assert losses == ref
    for (n, p), (_, q) in zip(whole.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), n
    with pytest.raises(QscaleError, match="another model, data or config"):
        qat_finetune(copy.deepcopy(llama), cfg, batches, steps=8, lr=1e-3, state_dir=tmp_path / "b", fingerprint="y")
