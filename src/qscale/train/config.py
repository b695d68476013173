"""Training configuration, validated at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from qscale.errors import require
from qscale.models.ladder import get_size
from qscale.train.engine import OptimConfig


@dataclass
class TrainConfig:
    """One training run: model, token budget, optimiser, schedule and checkpoint spacing.

    ``batch_size`` sequences of ``seq_len + 1`` tokens make one optimiser step, split into
    ``grad_accum`` micro-batches. Checkpoints are saved at steps ``ckpt_base * 2^k`` (Pythia-style
    log spacing), then every ``ckpt_every`` steps if set, and always at the last step.
    """

    size: str = "xs"
    tokens: int = 500_000  # training tokens; rounded up to whole steps
    batch_size: int = 16
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 3e-3
    embed_lr: float | None = None  # peak LR of the token embedding and LM head (None: lr)
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    schedule: str = "cosine"  # "cosine" | "wsd"
    decay_frac: float = 0.2  # WSD: fraction of steps in the final decay
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    ckpt_base: int = 1
    ckpt_every: int | None = None
    eval_windows: int = 32
    model: Path | None = None  # start from this local HF checkpoint instead of a fresh ladder model
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.model is None:
            get_size(self.size)
        else:
            self.model = Path(self.model)
        for name in ("tokens", "batch_size", "seq_len", "grad_accum", "ckpt_base", "eval_windows"):
            require(getattr(self, name) >= 1, f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        require(self.ckpt_every is None or self.ckpt_every >= 1, f"ckpt_every must be >= 1, got {self.ckpt_every}")
        require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        require(
            self.batch_size % self.grad_accum == 0,
            f"batch size {self.batch_size} is not divisible by grad accumulation {self.grad_accum}",
        )
        _ = self.optim  # validates the optimiser and schedule fields (one place: OptimConfig)
        require(self.device in ("auto", "cpu", "cuda"), f"unknown device {self.device!r} (auto, cpu or cuda)")

    @property
    def optim(self) -> OptimConfig:
        """The engine's optimiser/schedule settings of this run."""
        return OptimConfig(
            lr=self.lr,
            min_lr_ratio=self.min_lr_ratio,
            warmup=self.warmup_steps,
            schedule=self.schedule,
            decay_frac=self.decay_frac,
            weight_decay=self.weight_decay,
            betas=(self.beta1, self.beta2),
            grad_clip=self.grad_clip,
            embed_lr=self.embed_lr,
        )

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        return math.ceil(self.tokens / self.tokens_per_step)

    def checkpoint_steps(self) -> list[int]:
        """Log-spaced ``base, 2·base, 4·base, ...`` (up to ``ckpt_every``), multiples of ``ckpt_every``, the last
        step."""
        total, steps, s = self.total_steps, set(), self.ckpt_base
        limit = min(total, self.ckpt_every or total)
        while s <= limit:
            steps.add(s)
            s *= 2
        if self.ckpt_every:
            steps.update(range(self.ckpt_every, total + 1, self.ckpt_every))
        steps.add(total)
        return sorted(steps)
