"""Gradient flow of each QAT recipe, phase by phase, through the real engine (``qat_finetune``).

For every optimizer step the gradients the engine hands to AdamW are captured: what a recipe trains in a phase
gets a non-zero gradient at every step of that phase and moves; what it freezes (a parameter outside the
optimizer, a frozen buffer, the teacher copy) is bit-identical after the steps and has no optimizer state.
A recipe (or a phase of one: distillation, rank decay) is covered by adding a ``Case``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch

from qscale.qat import DistillConfig, QATRecipeConfig, prepare, qat_finetune, quant_layers
from qscale.qat.qvgen import QVGenOptions

STEPS = 6
LR = 1e-2  # Adam drives small LSQ steps through zero within a step or two at this rate: a stress case too
STATE_BUFFERS = (".initialized", ".gamma")  # buffers a recipe updates on purpose (LSQ's init flag, QVGen's γ)


@dataclass
class Case:
    cfg: QATRecipeConfig
    teacher: bool = False
    trained: tuple[str, ...] | None = None  # name suffixes of the trained parameters (None: all of them)
    dead_after: dict[str, int] = field(default_factory=dict)  # suffix -> first step from which it gets no gradient
    alive_from: dict[str, int] = field(default_factory=dict)  # suffix -> first step it must get a gradient
    some_steps: tuple[str, ...] = ()  # suffixes whose gradient may vanish on a batch, but not on all of them


CASES = {
    "ste": Case(QATRecipeConfig("ste", group_size=32)),
    "lsq": Case(QATRecipeConfig("lsq", group_size=32)),
    # LSQ+'s offset gradient is the upstream gradient of the clipped values: zero on a batch with none clipped
    "lsq-plus": Case(QATRecipeConfig("lsq", group_size=32, lsq_plus=True), some_steps=(".offset",)),
    "lsq-distill": Case(QATRecipeConfig("lsq", group_size=32, distill=DistillConfig()), teacher=True),
    "quest": Case(QATRecipeConfig("quest")),
    "bitnet": Case(QATRecipeConfig("bitnet")),
    "pbllm": Case(QATRecipeConfig("pbllm")),
    "ifairy": Case(QATRecipeConfig("ifairy")),
    # rank 4 decays 4 → 2 → 1 → 0 over the first half (steps 0-2); the branch is gone from step 3 on
    "qvgen": Case(
        QATRecipeConfig("qvgen", group_size=32, rank=4, options=QVGenOptions(decay_end=0.5)),
        dead_after={".U": 3, ".V": 3},
    ),
    # LoRA: A starts at zero, so B's gradient (A^T·G) is zero at the first step
    "efficientdm": Case(
        QATRecipeConfig("efficientdm", w_bits=4, a_bits=8, group_size=32, rank=4),
        teacher=True,
        trained=(".A", ".B", ".step"),
        alive_from={".B": 1},
    ),
}


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in [*module.named_parameters(), *module.named_buffers()]}


@pytest.mark.parametrize("name", sorted(CASES))
def test_trained_parameters_get_gradients_frozen_ones_do_not_move(name, tiny, batches, monkeypatch):
    case = CASES[name]
    model = tiny["llama"](0)
    teacher = copy.deepcopy(model) if case.teacher else None  # qat_finetune must freeze it
    prepare(model, case.cfg)
    before, teacher_before = _snapshot(model), (None if teacher is None else _snapshot(teacher))
    seen: list[dict[int, torch.Tensor | None]] = []
    optimizers = []
    step = torch.optim.AdamW.step

    def capture(self, *args, **kwargs):
        optimizers.append(self)
        seen.append({id(p): None if p.grad is None else p.grad.clone() for g in self.param_groups for p in g["params"]})
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", capture)
    qat_finetune(model, case.cfg, batches, steps=STEPS, lr=LR, teacher=teacher)
    assert len(seen) == STEPS
    opt = optimizers[-1]
    params = dict(model.named_parameters())
    trained = {n for n in params if case.trained is None or n.endswith(case.trained)}
    assert trained, "nothing trained"
    for n, p in params.items():
        if n not in trained:  # frozen: outside the optimizer, bit-identical, no optimizer state
            assert not p.requires_grad and all(id(p) not in s for s in seen), n
            assert p not in opt.state and torch.equal(p.detach(), before[n]), n
            continue
        dead = next((s for suffix, s in case.dead_after.items() if n.endswith(suffix)), STEPS)
        alive = next((s for suffix, s in case.alive_from.items() if n.endswith(suffix)), 0)
        if n.endswith(case.some_steps):
            assert any(g[id(p)] is not None and bool(g[id(p)].any()) for g in seen), f"{n}: never a gradient"
            alive = dead
        for i, grads in enumerate(seen):
            g = grads[id(p)]
            if alive <= i < dead:
                assert g is not None and bool(g.abs().gt(0).any()), f"{n}: no gradient at step {i}"
            elif i >= dead:
                assert g is None or not bool(g.any()), f"{n}: a gradient at step {i} after its phase"
        assert not torch.equal(p.detach(), before[n]), f"{n} did not move"
    for n, b in model.named_buffers():
        if not n.endswith(STATE_BUFFERS):
            assert torch.equal(b, before[n]), f"buffer {n} moved"
    if teacher is not None:
        assert all(not p.requires_grad for p in teacher.parameters())
        assert all(torch.equal(t, teacher_before[n]) for n, t in _snapshot(teacher).items()), "the teacher moved"


def test_pbllm_salient_weights_get_no_gradient_and_keep_their_values(tiny, batches, monkeypatch):
    """PB-LLM's frozen part is inside a trained matrix: its entries get exactly zero gradient at every step, and the
    quantized weight there is bit-identical after training (its values come from the frozen buffer)."""
    model = tiny["llama"](0)
    cfg = QATRecipeConfig("pbllm")
    prepare(model, cfg)
    layers = quant_layers(model)
    w_hat0 = {n: m.quantized_weight().detach().clone() for n, m in layers.items()}
    seen = []
    step = torch.optim.AdamW.step

    def capture(self, *args, **kwargs):
        seen.append({n: m.weight.grad.clone() for n, m in layers.items()})
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", capture)
    qat_finetune(model, cfg, batches, steps=STEPS, lr=LR, weight_decay=0.1)
    for n, m in layers.items():
        mask = m.weight_quantizer.mask
        assert mask.any() and all(not g[mask].any() and g[~mask].abs().gt(0).any() for g in (s[n] for s in seen)), n
        w_hat = m.quantized_weight().detach()
        assert torch.equal(w_hat[mask], w_hat0[n][mask]) and not torch.equal(w_hat[~mask], w_hat0[n][~mask]), n
