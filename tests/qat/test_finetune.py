import copy

import pytest
import torch

import qscale.qat.finetune as finetune_mod
from qscale.errors import QscaleError
from qscale.qat import DistillConfig, InterventionConfig, QATRecipeConfig, distill_loss, prepare, qat_finetune
from qscale.qat.finetune import qat_loss
from qscale.qat.intervention import signals, ti_loss
from qscale.train.engine import OptimConfig, logits_of, make_optimizer, train_steps

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


def test_intervention_finetune_follows_the_schedule_and_lowers_loss(llama, batches, monkeypatch):
    cfg = QATRecipeConfig("ste", w_bits=2, a_bits=16, group_size=32, intervention=InterventionConfig(handback=0.5))
    phases, real = [], finetune_mod.signals

    def spy(model, phase=None, teacher=None):
        if teacher is not None or phase is not None:  # the student's forward
            phases.append(phase)
        return real(model, phase, teacher)

    teacher = copy.deepcopy(llama)
    student = prepare(copy.deepcopy(llama), cfg)
    before = _plain_ti_loss(student, teacher, batches(999))
    monkeypatch.setattr(finetune_mod, "signals", spy)
    losses = qat_finetune(llama, cfg, batches, steps=30, lr=3e-3, warmup_steps=3, teacher=teacher)
    assert len(losses) == 30 and len(phases) == 30
    # step 1 (15 steps): output for 15/6, context up to 15/3, then map; step 2: plain QAT
    assert phases == ["output"] * 3 + ["context"] * 2 + ["map"] * 10 + [None] * 15
    after = _plain_ti_loss(llama, teacher, batches(999))
    assert after < 0.5 * before, (before, after)  # the 2-bit student moved towards its teacher


def _plain_ti_loss(student, teacher, batch):
    """TernaryBERT's loss of the student's own forward (no intervention) on a held-out batch, less its floor (the
    teacher's entropy, what the soft cross-entropy of the logits is at a perfect student)."""
    ids = batch[:, :-1]
    with torch.no_grad():
        with signals(teacher) as t_sig:
            t_logits = logits_of(teacher, ids)
        with signals(student) as s_sig:
            floor = -(torch.softmax(t_logits, -1) * torch.log_softmax(t_logits, -1)).sum(-1).mean()
            return float(ti_loss(s_sig, t_sig, logits_of(student, ids), t_logits) - floor)


def test_intervention_loss_feeds_the_teacher_only_while_intervening(llama, batches):
    teacher = copy.deepcopy(llama)
    prepare(llama, QATRecipeConfig("ste", w_bits=2, a_bits=16, group_size=32))
    cfg = QATRecipeConfig("ste", w_bits=2, a_bits=16, group_size=32, intervention=InterventionConfig(handback=1.0))
    loss, batch, steps = qat_loss(cfg, teacher, steps=10), batches(0), 10
    ids = batch[:, :-1]
    with torch.no_grad():
        with signals(teacher) as t_sig:
            t_logits = logits_of(teacher, ids)
        with signals(llama) as s_sig:
            plain = ti_loss(s_sig, t_sig, logits_of(llama, ids), t_logits)
        assert torch.equal(loss(llama, batch, steps - 1), plain)  # last step: the student's own forward
        assert float(loss(llama, batch, 0)) < float(plain)  # first step: the teacher's attention outputs


def test_intervention_gradient_flow_per_phase_over_real_steps(llama, batches):
    """Trained parameters move in every phase; what a phase cuts off (OI: v_proj, o_proj and input_layernorm,
    CI: v_proj and input_layernorm) is bit-identical after its steps and has no AdamW state."""
    teacher = copy.deepcopy(llama)
    cfg = QATRecipeConfig("ste", w_bits=2, a_bits=16, group_size=32, intervention=InterventionConfig(handback=1.0))
    prepare(llama, cfg)
    steps = 37  # step 1 spans 36 steps: output 0-5, context 6-11, map 12-35, then plain QAT
    optim = OptimConfig(lr=1e-3)
    opt = make_optimizer(llama, optim)
    fn = qat_loss(cfg, teacher, steps)
    cut = {(0, 6): {"v_proj", "o_proj", "input_layernorm"}, (6, 12): {"v_proj", "input_layernorm"}, (12, 14): set()}
    for (a, b), frozen in cut.items():
        before = {n: p.detach().clone() for n, p in llama.named_parameters()}
        train_steps(llama, batches, optim, steps, opt=opt, loss_fn=fn, start=a, end=b)
        for n, p in llama.named_parameters():
            if ".layers." not in n:
                continue
            kind = n.split(".")[-2]
            if kind in frozen:
                assert torch.equal(p.detach(), before[n]) and (a > 0 or p not in opt.state), (a, n)
            else:
                assert not torch.equal(p.detach(), before[n]), (a, n)


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
    losses = qat_finetune(
        again, cfg, batches, steps=8, lr=1e-3, state_dir=tmp_path / "b", save_every=3, fingerprint="x"
    )
    assert losses == ref
    for (n, p), (_, q) in zip(whole.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(p, q), n
    with pytest.raises(QscaleError, match="another model, data or config"):
        qat_finetune(copy.deepcopy(llama), cfg, batches, steps=8, lr=1e-3, state_dir=tmp_path / "b", fingerprint="y")
