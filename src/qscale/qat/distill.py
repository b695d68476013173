"""Distillation loss from the full-precision teacher (an option of every recipe; ``DistillConfig``).

``loss = T² · KL(p_teacher^T || p_student^T) + ce_weight · CE(student, labels)`` with temperature-``T``
softmaxes (Hinton et al. 2015, "Distilling the knowledge in a neural network", eq. 2 and the T² factor),
averaged over tokens; the form used by LLM-QAT (Liu et al. 2023) and BitDistiller for QAT.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from qscale.qat.config import DistillConfig


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, cfg: DistillConfig) -> Tensor:
    """Token-mean distillation loss; logits ``[..., V]``, labels ``[...]`` (next-token ids)."""
    v = student_logits.shape[-1]
    s = student_logits.reshape(-1, v).float()
    t = teacher_logits.reshape(-1, v).float().detach()
    temp = cfg.temperature
    kl = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True, reduction="batchmean")
    loss = kl * temp**2
    if cfg.ce_weight:
        loss = loss + cfg.ce_weight * F.cross_entropy(s, labels.reshape(-1))
    return loss
