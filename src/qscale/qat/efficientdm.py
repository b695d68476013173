"""``efficientdm``: QALoRA trained by data-free distillation (EfficientDM, He et al. 2023, arXiv 2310.03270).

- **QALoRA**: the pretrained weight ``W₀`` is frozen inside the quantizer and a LoRA update is merged into it
  *before* quantization, ``Ŵ = LSQ(W₀ + ΔW; s)`` (LSQ's step gradient and init, ``qscale.qat.lsq``), so
  after training the merged weight is one integer matrix (no adapter at inference); input activations, when
  ``a_bits < 16``, get LSQ's learned step (EfficientDM quantizes both). Only the LoRA factors and the steps train.
- **Scale-aware LoRA optimisation** (qscale's reading of the paper's): the update is expressed in units of the
  layer's weight step, ``ΔW = s̄·(α/r)·A·B`` with ``s̄`` the layer's mean step (not differentiated), so the same
  optimizer move changes the rounding of a coarse-grid layer as readily as that of a fine-grid one (layer
  step sizes differ by orders of magnitude; with a plain ``ΔW`` the coarse layers barely move their codes).
- **Data-free distillation**: the training sequences are sampled from the full-precision model itself
  (:func:`sample_sequences`: a uniformly random first token, then ancestral sampling at ``temperature``), and
  the loss is the KL divergence from the full-precision model's next-token distribution to the quantized one's
  on them (the LM analogue of EfficientDM's output matching; ``cfg.distill`` sets temperature / CE weight,
  default CE weight 0). No training corpus is read. Temporal LSQ (per diffusion step) has no LM analogue.

The merged-then-quantized weight and its LoRA gradients agree with the authors' ``QuantModule_intnlora``
(ThisisBillhe/EfficientDM, ``quant_scripts/quant_layer.py``; tests/qat/test_efficientdm.py). Deliberate differences:
their weight quantizer is affine per channel (learned step, zero point fixed after a PTQ init, no LSQ gradient
scale) and ``W₀`` is that PTQ model's dequantized weight; here LSQ's symmetric quantizer on the full-precision ``W₀``,
as the other LoRA recipes (l4q), so the recipes differ only in their method. Their scale-aware optimisation sets
each layer's LoRA learning rate to its mean step / 2500 (``train_efficientdm.py``); under Adam, whose step does
not depend on the gradient's scale, multiplying the update by ``s̄`` instead has the same effect to first order,
with one learning rate for the whole model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qscale.errors import require
from qscale.qat.config import DistillConfig
from qscale.qat.distill import distill_loss
from qscale.qat.hooks import Objective, TrainHooks
from qscale.qat.lowrank import MergedLSQWeightQuantizer
from qscale.qat.lsq import LSQActQuantizer
from qscale.qat.registry import Recipe, register
from qscale.qat.ste import weight_spec
from qscale.train.engine import logits_of


@dataclass(frozen=True)
class EfficientDMOptions:
    """samples: sequences drawn from the full-precision model; temperature: of that sampling."""

    samples: int = 256
    temperature: float = 1.0

    def __post_init__(self) -> None:
        require(
            isinstance(self.samples, int) and self.samples >= 1, f"efficientdm samples must be >= 1, got {self.samples}"
        )
        require(self.temperature > 0, f"efficientdm temperature must be positive, got {self.temperature}")


class QALoRAWeightQuantizer(MergedLSQWeightQuantizer):
    """LSQ on ``W₀ + s̄·(α/r)·A·B`` (scale-aware QALoRA); ``W₀`` a frozen buffer."""

    def _merged(self, A: Tensor, B: Tensor) -> Tensor:
        return self.w0 + (self.step.detach().abs().mean() * self.lora_scale * (A @ B)).to(self.w0.dtype)


@torch.no_grad()
def sample_sequences(
    model: nn.Module, n: int, length: int, seed: int, temperature: float = 1.0, chunk: int = 32
) -> Tensor:
    """``n`` token sequences ``[n, length]`` sampled from ``model`` (first token uniform over its vocabulary)."""
    require(n >= 1 and length >= 2, f"need n >= 1 sequences of length >= 2, got {n} x {length}")
    was_training = model.training
    model.eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out = []
    for start in range(0, n, chunk):
        ids = torch.randint(0, vocab, (min(chunk, n - start), 1), generator=g)
        past = None
        for _ in range(length - 1):
            res = model(input_ids=(ids if past is None else ids[:, -1:]).to(device), cache=past, use_cache=True)
            past = res.cache
            probs = torch.softmax(res.logits[:, -1].float().cpu() / temperature, dim=-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], dim=1)
        out.append(ids)
    model.train(was_training)
    return torch.cat(out)


def self_generated_batches(
    teacher: nn.Module, options: EfficientDMOptions, batch_size: int, seq_len: int, seed: int
) -> Callable[[int], Tensor]:
    """``batches(step)`` over ``options.samples`` sequences of ``seq_len + 1`` tokens sampled from ``teacher``."""
    pool = sample_sequences(teacher, options.samples, seq_len + 1, seed, options.temperature)

    def batches(step: int) -> Tensor:
        idx = (torch.arange(batch_size) + step * batch_size) % pool.shape[0]
        return pool[idx]

    return batches


class EfficientDMHooks(TrainHooks):
    """The loss is the distillation to the full-precision model (CE weight 0 unless ``cfg.distill`` says)."""

    def __init__(self, teacher: nn.Module, distill: DistillConfig):
        self.teacher, self.distill = teacher, distill

    def backward(self, model: nn.Module, batch: Tensor, objective: Objective, step: int, steps: int) -> Tensor:
        inputs = batch[:, :-1]
        with torch.no_grad():
            t_logits = logits_of(self.teacher, inputs)
        loss = distill_loss(logits_of(model, inputs), t_logits, batch[:, 1:], self.distill)
        loss.backward()
        return loss.detach()


@register
class EfficientDMRecipe(Recipe):
    name = "efficientdm"
    default_bits = (4, 16)
    trains_quantizers_only = True
    needs_teacher = True
    options_type = EfficientDMOptions

    def check_bits(self, w_bits: int, a_bits: int) -> None:
        require(w_bits == 16 or 2 <= w_bits <= 8, f"efficientdm quantizes weights to 2..8 bits, got {w_bits}")
        require(a_bits == 16 or 2 <= a_bits <= 8, f"efficientdm quantizes activations to 2..8 bits or 16, got {a_bits}")

    def weight_quantizer(self, weight, bits, cfg):
        return QALoRAWeightQuantizer(weight, weight_spec(bits, cfg.group_size, grid="full"), cfg.rank, cfg.lora_alpha)

    def act_quantizer(self, in_features, bits, cfg):
        return LSQActQuantizer(in_features, bits, False)

    def hooks(self, model, cfg, teacher):
        return EfficientDMHooks(teacher, cfg.distill or DistillConfig(ce_weight=0.0))
