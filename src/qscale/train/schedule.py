"""Learning-rate schedules as pure functions of the step (so resuming needs no scheduler state).

* ``cosine``: linear warmup, then cosine decay to ``min_lr_ratio · lr`` (Loshchilov & Hutter 2017).
* ``wsd``: warmup-stable-decay (Hu et al. 2024, MiniCPM, arXiv 2404.06395): linear warmup, constant,
  then linear decay to ``min_lr_ratio · lr`` over the last ``decay_frac`` of the steps.
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


def lr_at(step: int, cfg) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of a :class:`TrainConfig`."""
    factor = SCHEDULES[cfg.schedule](step, cfg.total_steps, cfg.warmup_steps, cfg.min_lr_ratio, cfg.decay_frac)
    return cfg.lr * factor
