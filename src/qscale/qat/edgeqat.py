"""``edgeqat``: EdgeQAT (Shen et al. 2024, arXiv 2402.10787; SPEC §6) — entropy- and distribution-guided QAT
of weights, activations and the attention's query and key, with token-importance-aware activation bits.
Checked against the authors' code (shawnricecake/EdgeQAT @ d1af625: ``distill_train/models/
modeling_llama_qat_mix.py`` and ``modeling_llama_qat_distribution_guide.py``, ``quant-train-distribution-guide-
llama-58m-distill.py``).

- Token importance (the authors' ``score_token``): each token's *pre-softmax* attention score to the first
  token, summed over heads and averaged over the batch, ``I_t = Σ_h mean_b (q_t·k_0)/√d`` — one ranking per
  batch, as the authors compute it. The ``int(low_fraction·T)`` least important tokens (50%) take ``a_bits``,
  the rest ``high_bits`` (8). A layer's ranking sets the bits of its own MLP inputs (and ``o_proj``'s) and of the
  next layer's q/k/v inputs, query and key; the first layer's, before any ranking, are all at ``high_bits``.
- Weights: LSQ (``qscale.qat.lsq``). Linear inputs, query and key (after RoPE): absmax per token (per token
  per head for q/k) on the restricted grid with the STE at the token's bits.
- Entropy term (the authors' ``loss_entropy``): ``L_E = −log Σ_{l,b,h,t} [log(1 + Var_d Q̂) + log(1 + Var_d K̂)]``
  (unbiased variance over the head dimension, keys repeated to the query heads): minimising it maximises the
  spread of the quantized q/k, countering their collapse.
- Distribution term: the cosine similarity of the quantized model's pre-softmax score maps to the
  full-precision model's (the authors' ``attn_all_layer``: ``q·kᵀ/√d`` before the causal mask, flattened per
  batch row and head), ``L_D = −log Σ_{l,b,h} cos(S_q, S_fp)``. The authors' script *adds* ``+log Σ cos``,
  which, minimised, pushes the maps apart — the opposite of the paper's stated aim (align the quantized
  attention's distribution with the full-precision one); qscale implements the sign that aligns them.
- Loss (the authors' ``DistillationTrainer``): ``ce_weight·CE + (1 − ce_weight)·T²·KL(p_fp^T ‖ p_q^T)`` with the
  KL summed over positions and averaged over sequences (``KLDivLoss(reduction="batchmean")`` on ``[B, T, V]``),
  ``T = 2``, ``ce_weight = 0.5``, ``+ distribution_weight·L_D`` (1) ``+ entropy_weight·L_E`` (0.5). The teacher
  is the full-precision model (the authors average it with two larger teachers qscale does not have).

Differences kept on purpose: the authors' activation quantizers are LSQ+ (a learned step and offset per tensor)
and also quantize the values and the attention probabilities but not ``o_proj``'s input; qscale keeps its
per-token absmax on every linear input. ``cfg.distill`` does not apply (the loss above is EdgeQAT's own).
The hooks are an attention implementation registered with transformers (``qscale_edgeqat``: eager attention
with the quantization and the records) installed on the Llama-family models whose attention calls it
(:data:`SUPPORTED`); another architecture is an error. ``load_quantized`` re-installs it (``attach``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qscale.errors import require
from qscale.qat.hooks import Objective, TrainHooks
from qscale.qat.linear import ActQuantizer
from qscale.qat.lsq import LSQRecipe
from qscale.qat.registry import register
from qscale.qat.ste import straight_through
from qscale.train.engine import logits_of

ATTN_NAME = "qscale_edgeqat"
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class EdgeQATOptions:
    """high_bits / low_fraction: the adaptive activation bits (the least important ``low_fraction`` of the tokens
    at the recipe's ``a_bits``, the rest at ``high_bits``); entropy_weight, distribution_weight: λ of L_E and L_D;
    temperature, ce_weight: the logit distillation ``ce_weight·CE + (1 − ce_weight)·T²·KL``."""

    high_bits: int = 8
    low_fraction: float = 0.5
    entropy_weight: float = 0.5
    distribution_weight: float = 1.0
    temperature: float = 2.0
    ce_weight: float = 0.5

    def __post_init__(self) -> None:
        require(
            isinstance(self.high_bits, int) and 2 <= self.high_bits <= 8,
            f"edgeqat high_bits must be in 2..8, got {self.high_bits!r}",
        )
        require(0 <= self.low_fraction <= 1, f"edgeqat low_fraction must be in [0, 1], got {self.low_fraction}")
        require(self.entropy_weight >= 0 and self.distribution_weight >= 0, "edgeqat loss weights must be >= 0")
        require(self.temperature > 0, f"edgeqat temperature must be positive, got {self.temperature}")
        require(0 <= self.ce_weight <= 1, f"edgeqat ce_weight must be in [0, 1], got {self.ce_weight}")


@dataclass
class EdgeState:
    """Shared by a model's attention layers and activation quantizers during one forward."""

    bits: int | None  # low bits of q/k; None: full-precision q/k (the teacher)
    high_bits: int = 8
    low_fraction: float = 0.5
    record: bool = False
    low_tokens: Tensor | None = None  # positions at low bits (the latest ranking), shared by the batch
    qk: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    scores: list[Tensor] = field(default_factory=list)  # pre-softmax, pre-mask q·kᵀ/√d [B, H, T, T]

    def reset(self) -> None:
        self.low_tokens, self.qk, self.scores = None, [], []

    def token_bits(self, n: int, low: int, device: torch.device) -> Tensor:
        """Bits of ``n`` token positions ``[n]``: ``low`` at the ranked low positions, ``high_bits`` elsewhere."""
        bits = torch.full((n,), self.high_bits, device=device)
        if self.low_tokens is not None and self.low_tokens.numel() and int(self.low_tokens.max()) < n:
            bits[self.low_tokens.to(device)] = low
        return bits


def absmax_fake_quant(x: Tensor, bits: Tensor | int) -> Tensor:
    """Symmetric absmax per row of the last dimension, restricted grid ``s = absmax/(2^(b−1) − 1)``, STE;
    ``bits`` an int or a tensor broadcasting to ``x[..., :1]``."""
    xd = x.detach().float()
    qmax = 2.0 ** (torch.as_tensor(bits, device=x.device).float() - 1) - 1
    scale = xd.abs().amax(-1, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return straight_through(x, (torch.round(xd / scale) * scale).to(x.dtype))


def low_tokens(scores: Tensor, fraction: float) -> Tensor:
    """The ``int(fraction·T)`` least important positions of pre-softmax scores ``[B, H, T, T]``, importance
    ``Σ_h mean_b scores[b, h, t, 0]`` (the authors' ``score_token``)."""
    importance = scores[..., 0].float().mean(dim=0).sum(dim=0)
    return torch.topk(importance, int(scores.shape[2] * fraction), largest=False).indices


def entropy_term(qk: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``−log Σ_l Σ_{b,h,t} [log(1 + Var_d q) + log(1 + Var_d k)]`` (q, k ``[B, H, T, d]``, keys repeated)."""
    total = sum(torch.log1p(q.float().var(dim=-1)).sum() + torch.log1p(k.float().var(dim=-1)).sum() for q, k in qk)
    return -torch.log(total)


def distribution_term(fp_scores: list[Tensor], q_scores: list[Tensor]) -> Tensor:
    """``−log Σ_{l,b,h} cos(S_q[b, h], S_fp[b, h])`` over score maps ``[B, H, T, T]`` flattened per (b, h)."""
    total = sum(
        F.cosine_similarity(sq.float().flatten(2), sf.float().flatten(2), dim=2, eps=1e-6).sum()
        for sf, sq in zip(fp_scores, q_scores, strict=True)
    )
    return -torch.log(total)


def logit_distillation(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T²·KL(softmax(teacher/T) ‖ softmax(student/T))`` summed over positions, averaged over sequences."""
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float().detach() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="sum") / student.shape[0] * temperature**2


def edgeqat_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Eager attention with q/k fake quantization at the tokens' bits, the records of ``EdgeState`` and the
    new ranking of the tokens."""
    state: EdgeState = module._qscale_edgeqat
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
    v = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    if state.bits is not None:
        q_bits = state.token_bits(query.shape[2], state.bits, query.device)[:, None]
        k_bits = (
            state.token_bits(k.shape[2], state.bits, k.device)[:, None]
            if k.shape[2] == query.shape[2]
            else state.high_bits
        )  # with a KV cache the keys of earlier steps have no ranking here
        query, k = absmax_fake_quant(query, q_bits), absmax_fake_quant(k, k_bits)
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    if state.record:
        state.qk.append((query, k))
        state.scores.append(scores)
    state.low_tokens = low_tokens(scores.detach(), state.low_fraction)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : k.shape[-2]]
    probs = F.softmax(scores.float(), dim=-1)
    out = torch.matmul(probs.to(value.dtype), v)
    return out.transpose(1, 2).contiguous(), probs


@functools.cache
def _register() -> None:
    """Register ``qscale_edgeqat`` with transformers (on first use: importing its attention interfaces loads
    the model classes, torch._dynamo and Triton)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_NAME, edgeqat_attention)
    AttentionMaskInterface.register(ATTN_NAME, eager_mask)


class TokenAdaptiveActQuantizer(ActQuantizer):
    """Per-token absmax: ``bits`` for the positions ranked least important (``EdgeState.low_tokens``), else
    ``high_bits``."""

    def __init__(self, bits: int, high_bits: int, low_fraction: float):
        super().__init__()
        self.bits, self.high_bits, self.low_fraction = bits, high_bits, low_fraction
        self.state: EdgeState | None = None  # linked by ``install`` (not a submodule, not saved)

    def token_bits(self, x: Tensor) -> Tensor:
        """Bits per token ``[..., T, 1]``."""
        if self.state is None or x.ndim != 3:
            return torch.full((*x.shape[:-1], 1), self.high_bits, device=x.device)
        return self.state.token_bits(x.shape[1], self.bits, x.device).expand(x.shape[0], -1)[..., None]

    def forward(self, x: Tensor) -> Tensor:
        return absmax_fake_quant(x, self.token_bits(x))

    def attach(self, model: nn.Module) -> None:
        install(model, self.bits, self.high_bits, self.low_fraction)

    def describe(self) -> dict:
        return {"kind": "edgeqat", "bits": self.bits, "high_bits": self.high_bits, "low_fraction": self.low_fraction}


def install(model: nn.Module, bits: int | None, high_bits: int = 8, low_fraction: float = 0.5) -> EdgeState:
    """Put ``model``'s attention on ``qscale_edgeqat`` with one shared state (idempotent); link its EdgeQAT
    activation quantizers. ``bits`` None: q/k unquantized (the teacher). ``QscaleError`` for an architecture
    whose attention is not hooked."""
    existing = getattr(model, "_qscale_edgeqat", None)
    if existing is not None:
        return existing
    kind = getattr(getattr(model, "config", None), "model_type", None)
    require(
        kind in SUPPORTED, f"edgeqat hooks the attention of {', '.join(SUPPORTED)} models; {kind!r} is not supported"
    )
    attns = [m for m in model.modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj") and hasattr(m, "scaling")]
    require(attns, f"edgeqat found no attention layer with q_proj/k_proj in this {kind} model")
    state = EdgeState(bits, high_bits, low_fraction)
    for m in attns:
        m._qscale_edgeqat = state
    for m in model.modules():
        if isinstance(m, TokenAdaptiveActQuantizer):
            m.state = state
    _register()
    model.set_attn_implementation(ATTN_NAME)
    model.register_forward_pre_hook(lambda mod, args: state.reset())
    model._qscale_edgeqat = state
    return state


class EdgeQATHooks(TrainHooks):
    def __init__(self, model: nn.Module, teacher: nn.Module, bits: int | None, opts: EdgeQATOptions):
        self.state = install(model, bits, opts.high_bits, opts.low_fraction)
        self.teacher_state = install(teacher, None, opts.high_bits, opts.low_fraction)
        self.teacher, self.opts = teacher, opts
        self.last: dict[str, float] = {}

    def backward(self, model: nn.Module, batch: Tensor, objective: Objective, step: int, steps: int) -> Tensor:
        o, ids = self.opts, batch[:, :-1]
        self.teacher_state.record = self.state.record = True
        try:
            with torch.no_grad():
                t_logits = logits_of(self.teacher, ids)
            s_logits = logits_of(model, ids)
            ce = F.cross_entropy(s_logits.float().flatten(0, 1), batch[:, 1:].flatten())
            kd = logit_distillation(s_logits, t_logits, o.temperature)
            l_d = distribution_term(self.teacher_state.scores, self.state.scores)
            l_e = entropy_term(self.state.qk)
        finally:
            self.teacher_state.record = self.state.record = False
            self.state.reset()
            self.teacher_state.reset()
        loss = o.ce_weight * ce + (1 - o.ce_weight) * kd + o.distribution_weight * l_d + o.entropy_weight * l_e
        loss.backward()
        self.last = {n: float(t.detach()) for n, t in (("ce", ce), ("kd", kd), ("distribution", l_d), ("entropy", l_e))}
        return loss.detach()


@register
class EdgeQATRecipe(LSQRecipe):
    name = "edgeqat"
    default_bits = (4, 4)
    needs_teacher = True
    options_type = EdgeQATOptions

    def act_quantizer(self, in_features, bits, cfg):
        o = cfg.options
        return TokenAdaptiveActQuantizer(bits, max(bits, o.high_bits), o.low_fraction)

    def hooks(self, model, cfg, teacher):
        require(
            cfg.distill is None and cfg.intervention is None,
            "edgeqat trains on its own loss (CE + logit distillation + attention terms): drop distill/intervention",
        )
        a_bits = cfg.default_bits[1]
        return EdgeQATHooks(model, teacher, None if a_bits == 16 else a_bits, cfg.options)
