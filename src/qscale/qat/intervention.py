"""Teacher Intervention (Kim et al. 2023, "Teacher Intervention: Improving Convergence of Quantization Aware
Training for Ultra-Low Precision Transformers", arXiv 2302.11812, EACL; authors' code MarsJacobs/ti-kd-qat,
``transformer/modeling_quant.py`` and ``main.py``, commit e9849cb): an option of any QAT recipe.

Inside *every* layer at once, one signal of the quantized student's self-attention is replaced by the
full-precision teacher's, so the quantization error of the attention does not propagate while the rest of the
layer (and every other layer) trains:

- ``output`` (the authors' OI, ``teacher_output``): the self-attention output, after the output projection
  (BERT's ``BertSelfOutput.dense``; here ``o_proj`` / GPT-NeoX ``dense``), is the teacher's;
- ``context`` (CI, ``teacher_context``): the attention context ``softmax(QKᵀ)·V`` entering the output
  projection is the teacher's;
- ``map`` (MI, ``teacher_attnmap``): the attention probabilities ``softmax(QKᵀ)`` are the teacher's (the
  student's own values V are mixed by them).

As in the authors' ``BertSelfAttention.forward``, the intervened student's queries and keys see a detached
input (their weights learn from the attention-score distillation term only); under ``output`` and ``context``
the values do too, under ``map`` the values see the live input.

Mapping onto Hugging Face Llama / GPT-NeoX (pre-LN, rotary, causal): the attention probabilities and the
context are computed by qscale's own attention function (``_attention``: eager attention with grouped-query
heads, registered with ``transformers.AttentionInterface`` as ``qscale_ti`` and switched on only inside
:func:`signals`), which records the pre-softmax scores (rotary queries and keys, ``·head_dim^-½``, plus the
causal mask) and substitutes the teacher's map or context; the self-attention output is the attention module's
first output (after ``o_proj`` / ``dense``). The detached "input" of the attention is the normed hidden state
entering the q/k/v projections (BERT's self-attention has no norm in front; its LayerNorm closes the previous
sub-layer), so in the ``output`` and ``context`` phases ``input_layernorm`` gets no gradient; under ``map`` the
q/k inputs are detached at ``q_proj``/``k_proj`` (Llama) or in the q/k columns of the fused ``query_key_value``
(GPT-NeoX). The "attention output" of the distillation loss (BERT's ``LayerNorm(self-output + input)``) is the
residual stream after the attention sub-layer, block input + self-attention output (no norm there in a pre-LN
model; under ``output`` it carries the teacher's self-attention output, as in the authors' code).

Schedule (``main.py``, TI-G ``teacher_gradual``): the authors' step 1 (``handback`` of the steps here; 60 or 120
iterations of their 3-epoch runs, 1–26 % depending on the task) intervenes with ``output`` for its first sixth,
``context`` up to its third and ``map`` for the rest; step 2 (the remaining steps, at least the last one) is
plain QAT, no teacher signal. The loss of both steps is TernaryBERT's distillation (Zhang et al. 2020;
``main.py``: ``pred_distill + rep_distill + attn_distill + output_distill``, no ground-truth loss): the soft
cross-entropy of the logits plus, summed over layers, the MSE of the hidden states (embedding output and every
block's output), of the pre-softmax attention scores (entries ≤ −100, the masked ones, set to 0 on both sides)
and of the attention outputs, each with weight 1 (:func:`ti_loss`). Differences on purpose: one run with one
optimizer and LR schedule across both steps (the authors restart BertAdam for step 2 from step 1's weights).
"""

from __future__ import annotations

import functools
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qscale.errors import require
from qscale.ptq.layers import find_blocks
from qscale.qat.config import InterventionConfig

PHASES = ("output", "context", "map")
IMPL = "qscale_ti"
MASKED = -1e2  # TernaryBERT / the authors: attention scores at or below this are the mask's, compared as 0


def phase_at(step: int, steps: int, cfg: InterventionConfig) -> str | None:
    """The intervention of ``step`` (``main.py``'s TI-G): ``output``, ``context``, ``map``, or None (plain QAT).

    Step 1 spans ``handback · steps`` steps, never the last one.
    """
    span = min(cfg.handback * steps, steps - 1)
    if step >= span:
        return None
    return "output" if step < span / 6 else "context" if step < span / 3 else "map"


@dataclass
class Signals:
    """Per-layer signals of one forward: ``hidden`` has the embedding output then every block's output."""

    hidden: list[Tensor] = field(default_factory=list)
    scores: dict[int, Tensor] = field(default_factory=dict)  # pre-softmax attention scores [B, H, T, T]
    probs: dict[int, Tensor] = field(default_factory=dict)  # attention map [B, H, T, T]
    context: dict[int, Tensor] = field(default_factory=dict)  # softmax(QKᵀ)·V [B, T, H, D]
    sa_out: dict[int, Tensor] = field(default_factory=dict)  # self-attention output (after o_proj)
    attn_out: dict[int, Tensor] = field(default_factory=dict)  # block input + self-attention output


_ACTIVE: dict[int, tuple[Signals, int, str | None, Signals | None]] = {}  # id(attention module) -> its role


def _attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    """Eager attention that records scores, map and context, and substitutes the teacher's map or context."""
    rec, i, phase, teacher = _ACTIVE[id(module)]
    rep = query.shape[1] // key.shape[1]  # grouped-query heads share keys and values
    key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    rec.scores[i], rec.probs[i] = scores, probs
    used = teacher.probs[i] if phase == "map" else probs
    context = torch.matmul(F.dropout(used, p=dropout, training=module.training), value).transpose(1, 2)
    rec.context[i] = context
    if phase == "context":
        context = teacher.context[i]
    return context.contiguous(), probs


@functools.cache
def _register() -> None:
    """Register ``qscale_ti`` with transformers (on first use: importing its attention interfaces loads the
    model classes, torch._dynamo and Triton)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPL, _attention)
    AttentionMaskInterface.register(IMPL, eager_mask)


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """Each decoder block's self-attention module (Llama ``self_attn``, GPT-NeoX ``attention``)."""
    found = [
        next(
            (m for m in (getattr(b, "self_attn", None), getattr(b, "attention", None)) if isinstance(m, nn.Module)),
            None,
        )
        for b in find_blocks(model)[1]
    ]
    require(
        all(m is not None for m in found),
        "Teacher Intervention needs Llama- or GPT-NeoX-style blocks (a self_attn or attention module)",
    )
    return found


def _detach_first(mod, args, kwargs):
    if args:
        return (args[0].detach(), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}


def _stop_qk_grad(attn: nn.Module) -> list:
    """Hooks that detach the q/k projections' input (the authors' stop-gradient under the ``map`` phase)."""
    if hasattr(attn, "q_proj") and hasattr(attn, "k_proj"):
        return [
            m.register_forward_pre_hook(lambda mod, args: (args[0].detach(), *args[1:]))
            for m in (attn.q_proj, attn.k_proj)
        ]
    require(hasattr(attn, "query_key_value"), "Teacher Intervention knows q_proj/k_proj or query_key_value only")
    d = attn.head_size

    def fused(mod, args, out):  # GPT-NeoX: per head [q | k | v]; q and k from the detached input
        frozen_in = mod.forward(args[0].detach())  # forward(): no hooks, no recursion
        shape = (*out.shape[:-1], -1, 3 * d)
        keep_v = torch.arange(3 * d, device=out.device) >= 2 * d
        return torch.where(keep_v, out.view(shape), frozen_in.view(shape)).view(out.shape)

    return [attn.query_key_value.register_forward_hook(fused)]


@contextmanager
def signals(model: nn.Module, phase: str | None = None, teacher: Signals | None = None):
    """Record the :class:`Signals` of ``model``'s forwards in the context; with ``phase`` substitute ``teacher``'s.

    The model's attention runs through qscale's eager attention (``qscale_ti``) inside the context only.
    """
    require(phase in (None, *PHASES), f"unknown intervention phase {phase!r}")
    require(phase is None or teacher is not None, "an intervention phase needs the teacher's signals")
    _, blocks = find_blocks(model)
    attns = _attention_modules(model)
    rec = Signals()
    inputs: dict[int, Tensor] = {}

    def block_pre(i):
        def hook(mod, args, kwargs):
            inputs[i] = args[0] if args else kwargs["hidden_states"]
            if i == 0:
                rec.hidden[:] = [inputs[0]]

        return hook

    def block_post(i):
        def hook(mod, args, out):
            rec.hidden.append(out[0] if isinstance(out, tuple) else out)

        return hook

    def attn_post(i):
        def hook(mod, args, out):
            own = out[0]
            rec.sa_out[i] = own
            used = teacher.sa_out[i] if phase == "output" else own
            rec.attn_out[i] = inputs[i] + used
            return (used, *out[1:]) if phase == "output" else None

        return hook

    configs = {id(a.config): a.config for a in attns}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    with ExitStack() as stack:
        for i, (b, a) in enumerate(zip(blocks, attns, strict=True)):
            hooks = [
                b.register_forward_pre_hook(block_pre(i), with_kwargs=True),
                b.register_forward_hook(block_post(i)),
                a.register_forward_hook(attn_post(i)),
            ]
            if phase in ("output", "context"):
                hooks.append(a.register_forward_pre_hook(_detach_first, with_kwargs=True))
            elif phase == "map":
                hooks += _stop_qk_grad(a)
            for h in hooks:
                stack.callback(h.remove)
            _ACTIVE[id(a)] = (rec, i, phase, teacher)
            stack.callback(_ACTIVE.pop, id(a), None)
        _register()
        for c in configs.values():
            c._attn_implementation = IMPL
        try:
            yield rec
        finally:
            for k, c in configs.items():
                c._attn_implementation = saved[k]


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """TernaryBERT's logit term: ``−Σ softmax(t)·log_softmax(s)``, averaged over tokens."""
    v = student_logits.shape[-1]
    s, t = student_logits.reshape(-1, v).float(), teacher_logits.reshape(-1, v).float()
    return -(F.softmax(t, -1) * F.log_softmax(s, -1)).sum(-1).mean()


def _unmasked(scores: Tensor) -> Tensor:
    scores = scores.float()
    return torch.where(scores <= MASKED, torch.zeros_like(scores), scores)


def ti_loss(student: Signals, teacher: Signals, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """TernaryBERT's distillation loss (the authors' ``main.py``): logits soft CE + hidden, score, output MSEs."""
    require(
        len(student.hidden) == len(teacher.hidden) and student.scores.keys() == teacher.scores.keys(),
        "teacher and student have different numbers of blocks",
    )
    loss = soft_cross_entropy(student_logits, teacher_logits.detach())
    for a, b in zip(student.hidden, teacher.hidden, strict=True):
        loss = loss + F.mse_loss(a.float(), b.detach().float())
    for i in student.scores:
        loss = loss + F.mse_loss(_unmasked(student.scores[i]), _unmasked(teacher.scores[i].detach()))
        loss = loss + F.mse_loss(student.attn_out[i].float(), teacher.attn_out[i].detach().float())
    return loss
