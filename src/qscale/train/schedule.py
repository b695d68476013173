"""Learning-rate schedules as pure functions of the step (so resuming needs no scheduler state).

* ``cosine``: linear warmup, then cosine decay to ``min_lr_ratio · lr`` at the last step (Loshchilov &
  Hutter 2017).
* ``wsd``: warmup-stable-decay (Hu et al. 2024, MiniCPM, arXiv 2404.06395): linear warmup, constant,
  then linear decay to ``min_lr_ratio · lr`` over the last ``decay_frac`` of the steps.

The one schedule implementation of qscale: suite training, ``qscale qat`` fine-tuning and the QAT study
all take their rate from :func:`lr_factor` (through ``qscale.train.engine.OptimConfig``).
"""

from __future__ import annotations

import math


def _warmup(step: int, warmup: int) -> float | None:
    return (step + 1) / warmup if step < warmup else None


def cosine(step: int, total: int, warmup: int, min_ratio: float, decay_frac: float) -> float:
    w = _warmup(step, warmup)
    if w is not None:
        return w
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def wsd(step: int, total: int, warmup: int, min_ratio: float, decay_frac: float) -> float:
    w = _warmup(step, warmup)
    if w is not None:
        return w
    decay_start = max(warmup, total - max(1, round(decay_frac * total)))
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / max(1, total - decay_start))
    return 1.0 - (1 - min_ratio) * progress


SCHEDULES = {"cosine": cosine, "wsd": wsd}


def lr_factor(schedule: str, step: int, total: int, warmup: int, min_ratio: float, decay_frac: float) -> float:
    """Multiplier of the peak rate at optimiser step ``step`` (0-based) of ``total`` steps."""
    return SCHEDULES[schedule](step, total, warmup, min_ratio, decay_frac)
