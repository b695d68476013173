"""Teacher Intervention: the authors' gradual schedule, qscale's attention equals the model's own, each phase
substitutes the teacher's signal inside every layer, every block gets a gradient in every phase, and the loss
equals the authors' TernaryBERT loss (golden numbers)."""

import copy

import pytest
import torch

from qscale.errors import QscaleError
from qscale.ptq.layers import find_blocks
from qscale.qat import QATRecipeConfig, prepare
from qscale.qat.intervention import InterventionConfig, Signals, phase_at, signals, ti_loss
from qscale.train.engine import logits_of

PHASES = [None, "output", "context", "map"]


def test_schedule_is_the_authors_gradual_intervention_then_plain_qat():
    # main.py (TI-G): global_step < N1/6 -> OI, < N1/3 -> CI, else MI over step 1 (N1 steps); step 2: no TI
    phases = [phase_at(s, 100, InterventionConfig(handback=0.5)) for s in range(100)]
    assert phases[:9] == ["output"] * 9 and phases[9:17] == ["context"] * 8 and phases[17:50] == ["map"] * 33
    assert phases[50:] == [None] * 50
    full = InterventionConfig(handback=1.0)  # step 1 never takes the last step
    assert phase_at(98, 100, full) == "map" and phase_at(99, 100, full) is None
    with pytest.raises(QscaleError):
        InterventionConfig(handback=0)
    with pytest.raises(QscaleError, match="own distillation loss"):
        from qscale.qat import DistillConfig

        QATRecipeConfig("ste", intervention=InterventionConfig(), distill=DistillConfig())


@pytest.mark.parametrize("arch", ["llama", "neox"])
def test_recording_attention_is_the_models_own(tiny, batches, arch):
    model = tiny[arch]()
    ids = batches(0)[:, :-1]
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, use_cache=False)
        with signals(model) as rec:
            got = logits_of(model, ids)
    assert model.config._attn_implementation == "eager"  # restored
    assert torch.allclose(got, out.logits, atol=1e-5)
    n = len(find_blocks(model)[1])
    assert len(rec.hidden) == n + 1 and sorted(rec.scores) == list(range(n))
    for i in range(n):  # the recorded map is Hugging Face's eager attention map
        assert torch.allclose(rec.probs[i], out.attentions[i], atol=1e-6)
        assert torch.allclose(torch.softmax(rec.scores[i], -1), out.attentions[i], atol=1e-6)


def _perturbed_logits(student, t_sig, ids, phase, names):
    """The student's logits under ``phase`` before and after perturbing its parameters named ``names``."""
    with torch.no_grad():
        with signals(student, phase, t_sig):
            before = logits_of(student, ids)
        moved = copy.deepcopy(student)
        for n, p in moved.named_parameters():
            if n.split(".")[-2] in names:
                p.add_(0.5 * torch.randn_like(p))
        with signals(moved, phase, t_sig):
            after = logits_of(moved, ids)
    return before, after


@pytest.mark.parametrize(
    "phase,bypassed,used",
    [
        ("output", ("o_proj", "v_proj", "q_proj", "k_proj"), ("up_proj",)),
        ("context", ("v_proj", "q_proj", "k_proj"), ("o_proj",)),
        ("map", ("q_proj", "k_proj"), ("v_proj",)),
    ],
)
def test_each_phase_replaces_its_signal_in_every_layer(llama, batches, phase, bypassed, used):
    teacher = copy.deepcopy(llama)
    ids = batches(0)[:, :-1]
    with torch.no_grad(), signals(teacher) as t_sig:
        logits_of(teacher, ids)
    # the substituted signal no longer depends on the student's weights that produce it (in any layer) ...
    before, after = _perturbed_logits(llama, t_sig, ids, phase, bypassed)
    assert torch.allclose(before, after, atol=1e-5)
    # ... while the rest of the layer still does
    before, after = _perturbed_logits(llama, t_sig, ids, phase, used)
    assert not torch.allclose(before, after, atol=1e-3)
    # an unchanged student under intervention reproduces the teacher exactly
    with torch.no_grad(), signals(llama, phase, t_sig) as s_sig:
        assert torch.allclose(logits_of(llama, ids), logits_of(teacher, ids), atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(s_sig.hidden, t_sig.hidden, strict=True))


# the parameters the authors' stop-gradient and substitution leave without gradient in each phase (GPT-NeoX: o_proj is
# "dense"; its fused query_key_value keeps the q/k gradient of the attention-score term)
NO_GRAD = {
    "llama": {"output": {"v_proj", "o_proj", "input_layernorm"}, "context": {"v_proj", "input_layernorm"}},
    "neox": {"output": {"dense", "input_layernorm"}, "context": {"input_layernorm"}},
}


@pytest.mark.parametrize("arch", ["llama", "neox"])
@pytest.mark.parametrize("phase", PHASES)
def test_every_block_gets_a_gradient_in_every_phase(tiny, batches, arch, phase):
    student = tiny[arch]()
    teacher = copy.deepcopy(student)
    prepare(student, QATRecipeConfig("ste", w_bits=2, a_bits=16, group_size=32))
    student.train()
    ids = batches(0)[:, :-1]
    with torch.no_grad(), signals(teacher) as t_sig:
        t_logits = logits_of(teacher, ids)
    with signals(student, phase, t_sig) as s_sig:
        s_logits = logits_of(student, ids)
    ti_loss(s_sig, t_sig, s_logits, t_logits).backward()
    _, blocks = find_blocks(student)
    norms = [float(torch.sqrt(sum((p.grad**2).sum() for p in b.parameters() if p.grad is not None))) for b in blocks]
    assert all(x > 0 for x in norms), (phase, norms)  # the gradient-norm probe: no block cut off
    for name, p in student.named_parameters():
        if ".layers." not in name:
            continue
        zero = p.grad is None or not bool(p.grad.abs().sum() > 0)
        assert zero == (name.split(".")[-2] in NO_GRAD[arch].get(phase, set())), (phase, name)


def _t(shape, k):
    """Fixed tensors (the same formula as the scratch run of the authors' loss)."""
    n = 1
    for s in shape:
        n *= s
    return torch.sin(torch.arange(n, dtype=torch.float32) * 0.37 + k).reshape(shape) * (1 + k / 4)


def test_ti_loss_equals_the_authors_ternarybert_loss():
    # Golden: MarsJacobs/ti-kd-qat main.py @ e9849cbdf6aebfe823fd5889242cad8bbdeacb71 -- soft_cross_entropy run
    # verbatim and the loss block (pred + rep + attn-score + output distill, lines 787-823, "cuda" -> CPU)
    # on these tensors in a scratch folder outside the project: cls, rep, attscore, output, total.
    mask = torch.triu(torch.full((3, 3), -1e4), 1)
    s, t = Signals(), Signals()
    s.hidden, t.hidden = [_t((2, 3, 4), 3 + i) for i in range(3)], [_t((2, 3, 4), 7 + i) for i in range(3)]
    for i in range(2):
        s.scores[i], t.scores[i] = _t((2, 2, 3, 3), 11 + i) + mask, _t((2, 2, 3, 3), 13 + i) + mask
        s.attn_out[i], t.attn_out[i] = _t((2, 3, 4), 15 + i), _t((2, 3, 4), 17 + i)
    loss = ti_loss(s, t, _t((2, 3, 5), 1), _t((2, 3, 5), 2))
    assert float(loss) == pytest.approx(140.33578491210938, rel=1e-6)
    no_logits = ti_loss(s, t, _t((2, 3, 5), 2), _t((2, 3, 5), 2))  # soft CE of t with itself: its entropy
    assert float(loss - no_logits) == pytest.approx(1.5809965133666992 - float(_entropy(_t((2, 3, 5), 2))), abs=1e-4)


def _entropy(logits):
    p = torch.softmax(logits, -1)
    return -(p * torch.log_softmax(logits, -1)).sum(-1).mean()
