"""``edgeqat``: EdgeQAT (Shen et al. 2024, arXiv 2402.10787; SPEC §6) — entropy- and distribution-guided QAT
of weights, activations and the attention's query and key, with token-importance-aware activation bits.

- Weights: LSQ (``qscale.qat.lsq``). Linear inputs: absmax per token on the restricted grid with the STE, at
  ``high_bits`` for the ``important_fraction`` most important tokens of each sequence and ``a_bits`` for the
  rest. A token's importance is the mean attention it receives, ``I_t = mean_h Σ_q A[h, q, t] / (T − t)``
  (the queries that can see it, causal), from the latest attention layer of the same forward (the first
  block's q/k/v inputs, before any attention, use ``a_bits`` for all tokens).
- Query and key (after RoPE, the operands of ``QKᵀ``): absmax per token per head to ``qk_bits`` with the STE.
- Entropy term (quantized q/k taken Gaussian, ``H = ½·log(2πe·σ²)``):
  ``L_E = −mean_l [mean_h H(Q̂_{l,h}) + mean_g H(K̂_{l,g})]`` (query heads h, key heads g) with ``σ²`` the variance of all elements of that head's quantized query (key) — minimising it maximises
  their entropy, countering the collapse of quantized q/k.
- Distribution term: ``L_D = mean_{l,b,h,q} KL(A_fp ‖ A_q)`` between the full-precision model's attention
  rows (a frozen copy run on the same batch) and the quantized model's.
- Loss: the task loss (CE, or the distillation loss with ``cfg.distill``) ``+ entropy_weight·L_E +
  distribution_weight·L_D``.

The hooks are an attention implementation registered with transformers (``qscale_edgeqat``: eager attention
with the quantization and the records) installed on the Llama-family models whose attention calls it
(:data:`SUPPORTED`); another architecture is an error. ``load_quantized`` re-installs it (``attach``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from qscale.errors import require
from qscale.qat.hooks import Objective, TrainHooks
from qscale.qat.linear import ActQuantizer
from qscale.qat.lsq import LSQRecipe
from qscale.qat.registry import register
from qscale.qat.ste import straight_through

ATTN_NAME = "qscale_edgeqat"
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class EdgeQATOptions:
    """qk_bits: query/key bits (None = the recipe's a_bits); high_bits / important_fraction: the adaptive
    activation bits; entropy_weight, distribution_weight: λ of L_E and L_D."""

    qk_bits: int | None = None
    high_bits: int = 8
    important_fraction: float = 0.1
    entropy_weight: float = 0.01
    distribution_weight: float = 1.0

    def __post_init__(self) -> None:
        for name, b in (("qk_bits", self.qk_bits), ("high_bits", self.high_bits)):
            require(b is None or (isinstance(b, int) and 2 <= b <= 8), f"edgeqat {name} must be in 2..8, got {b!r}")
        require(0 <= self.important_fraction <= 1, f"edgeqat important_fraction must be in [0, 1], got {self.important_fraction}")
        require(self.entropy_weight >= 0 and self.distribution_weight >= 0, "edgeqat loss weights must be >= 0")


@dataclass
class EdgeState:
    """Shared by a model's attention layers and activation quantizers during one forward."""

    qk_bits: int | None  # None: full-precision q/k (the teacher)
    record: bool = False
    importance: Tensor | None = None  # [B, T]
    qk: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    maps: list[Tensor] = field(default_factory=list)  # log attention probabilities [B, H, T, T]

    def reset(self) -> None:
        self.importance, self.qk, self.maps = None, [], []


def absmax_fake_quant(x: Tensor, bits: Tensor | int) -> Tensor:
    """Symmetric absmax per row of the last dimension, restricted grid ``s = absmax/(2^(b−1) − 1)``, STE;
    ``bits`` an int or a tensor broadcasting to ``x[..., :1]``."""
    xd = x.detach().float()
    qmax = (2.0 ** (torch.as_tensor(bits, device=x.device).float() - 1) - 1)
    scale = xd.abs().amax(-1, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return straight_through(x, (torch.round(xd / scale) * scale).to(x.dtype))


def token_importance(log_maps: Tensor) -> Tensor:
    """``I_t = mean_h Σ_q A[h, q, t] / (T − t)`` from log attention probabilities ``[B, H, T, T]`` → ``[B, T]``."""
    received = log_maps.exp().sum(dim=2).mean(dim=1)
    T = log_maps.shape[-1]
    return received / torch.arange(T, 0, -1, device=log_maps.device, dtype=received.dtype)


def gaussian_entropy(x: Tensor) -> Tensor:
    """``½·log(2πe·Var(x))`` over all elements of ``x``."""
    return 0.5 * torch.log(2 * math.pi * math.e * x.float().var(unbiased=False))


def entropy_term(qk: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``L_E = −mean_l [mean_h H(Q̂_{l,h}) + mean_g H(K̂_{l,g})]`` (q ``[B, H, T, d]``, k ``[B, G, T, d]``)."""
    terms = [torch.stack([gaussian_entropy(q[:, h]) for h in range(q.shape[1])]).mean()
             + torch.stack([gaussian_entropy(k[:, g]) for g in range(k.shape[1])]).mean() for q, k in qk]
    return -torch.stack(terms).mean()


def distribution_term(fp_maps: list[Tensor], q_maps: list[Tensor]) -> Tensor:
    """``L_D = mean over layers, batch, heads and query rows of KL(A_fp ‖ A_q)`` (log maps ``[B, H, T, T]``)."""
    terms = []
    for lp, lq in zip(fp_maps, q_maps, strict=True):
        p = lp.exp()
        terms.append(torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1).mean())
    return torch.stack(terms).mean()


def edgeqat_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                      scaling: float, dropout: float = 0.0, **kwargs) -> tuple[Tensor, Tensor]:
    """Eager attention with q/k fake quantization, the records of ``EdgeState`` and the token importance."""
    state: EdgeState = module._qscale_edgeqat
    if state.qk_bits is not None:
        query, key = absmax_fake_quant(query, state.qk_bits), absmax_fake_quant(key, state.qk_bits)
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
    v = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : k.shape[-2]]
    log_maps = F.log_softmax(scores.float(), dim=-1)
    if state.record:
        state.qk.append((query, key))
        state.maps.append(log_maps)
    state.importance = token_importance(log_maps.detach())
    out = torch.matmul(log_maps.exp().to(value.dtype), v)
    return out.transpose(1, 2).contiguous(), log_maps.exp()


AttentionInterface.register(ATTN_NAME, edgeqat_attention)
AttentionMaskInterface.register(ATTN_NAME, eager_mask)


class TokenAdaptiveActQuantizer(ActQuantizer):
    """Per-token absmax: ``high_bits`` for the most important tokens (``EdgeState.importance``), else ``bits``."""

    def __init__(self, bits: int, high_bits: int, fraction: float, qk_bits: int):
        super().__init__()
        self.bits, self.high_bits, self.fraction, self.qk_bits = bits, high_bits, fraction, qk_bits
        self.state: EdgeState | None = None  # linked by ``install`` (not a submodule, not saved)

    def token_bits(self, x: Tensor) -> Tensor:
        """Bits per token ``[..., T, 1]``."""
        imp = None if self.state is None else self.state.importance
        bits = torch.full(x.shape[:-1], self.bits, device=x.device)
        if imp is None or x.ndim != 3 or tuple(imp.shape) != tuple(x.shape[:2]) or self.fraction == 0:
            return bits[..., None]
        k = max(1, math.ceil(self.fraction * x.shape[1]))
        top = imp.topk(min(k, x.shape[1]), dim=-1).indices
        return bits.scatter(1, top, self.high_bits)[..., None]

    def forward(self, x: Tensor) -> Tensor:
        return absmax_fake_quant(x, self.token_bits(x))

    def attach(self, model: nn.Module) -> None:
        install(model, self.qk_bits)

    def describe(self) -> dict:
        return {"kind": "edgeqat", "bits": self.bits, "high_bits": self.high_bits, "fraction": self.fraction,
                "qk_bits": self.qk_bits}


def install(model: nn.Module, qk_bits: int | None) -> EdgeState:
    """Put ``model``'s attention on ``qscale_edgeqat`` with one shared state (idempotent); link its EdgeQAT
    activation quantizers. ``QscaleError`` for an architecture whose attention is not hooked."""
    existing = getattr(model, "_qscale_edgeqat", None)
    if existing is not None:
        return existing
    kind = getattr(getattr(model, "config", None), "model_type", None)
    require(kind in SUPPORTED, f"edgeqat hooks the attention of {', '.join(SUPPORTED)} models; {kind!r} is not supported")
    attns = [m for m in model.modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj") and hasattr(m, "scaling")]
    require(attns, f"edgeqat found no attention layer with q_proj/k_proj in this {kind} model")
    state = EdgeState(qk_bits)
    for m in attns:
        m._qscale_edgeqat = state
    for m in model.modules():
        if isinstance(m, TokenAdaptiveActQuantizer):
            m.state = state
    model.set_attn_implementation(ATTN_NAME)
    model.register_forward_pre_hook(lambda mod, args: state.reset())
    model._qscale_edgeqat = state
    return state


class EdgeQATHooks(TrainHooks):
    def __init__(self, model: nn.Module, teacher: nn.Module, qk_bits: int, opts: EdgeQATOptions):
        self.state = install(model, qk_bits)
        self.teacher_state = install(teacher, None)
        self.teacher, self.opts = teacher, opts
        self.last: dict[str, float] = {}

    def backward(self, model: nn.Module, batch: Tensor, objective: Objective, step: int, steps: int) -> Tensor:
        self.teacher_state.record = self.state.record = True
        try:
            with torch.no_grad():
                self.teacher(input_ids=batch[:, :-1])
            fp_maps = self.teacher_state.maps
            task = objective(batch)
            l_e, l_d = entropy_term(self.state.qk), distribution_term(fp_maps, self.state.maps)
        finally:
            self.teacher_state.record = self.state.record = False
        loss = task + self.opts.entropy_weight * l_e + self.opts.distribution_weight * l_d
        loss.backward()
        self.last = {"task": float(task.detach()), "entropy": float(l_e.detach()), "distribution": float(l_d.detach())}
        self.state.reset()
        self.teacher_state.reset()
        return loss.detach()


@register
class EdgeQATRecipe(LSQRecipe):
    name = "edgeqat"
    default_bits = (4, 4)
    needs_teacher = True
    options_type = EdgeQATOptions

    def act_quantizer(self, in_features, bits, cfg):
        o = cfg.options
        return TokenAdaptiveActQuantizer(bits, max(bits, o.high_bits), o.important_fraction, o.qk_bits or bits)

    def hooks(self, model, cfg, teacher):
        qk = cfg.options.qk_bits or (cfg.default_bits[1] if cfg.default_bits[1] != 16 else None)
        return EdgeQATHooks(model, teacher, qk, cfg.options)
