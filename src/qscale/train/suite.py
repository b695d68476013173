"""Checkpoint suites: several ladder sizes trained on one corpus, each with Pythia-style log-spaced
checkpoints (Biderman et al. 2023: steps 1, 2, 4, ..., then regular), the raw material of QiD studies.

Presets:

* ``tiny``  - tests: two sizes, 24 steps of 8 x 32 tokens, seconds.
* ``quick`` - the default study: xs, s, m, l; 384 steps of 8 x 128 tokens (393k tokens) each,
  checkpoints at steps 2, 4, ..., 256, 384 (9 per size). Measured on one core of a shared 2-core
  machine (CPU seconds, fp32, incl. checkpoint evals and saves): xs 33, s 43, m 63, l 115, i.e.
  ~4.2 min single-threaded, less with two idle cores. At this budget training is step-limited:
  final validation losses are 4.93 / 4.97 / 5.05 / 5.09 nats/token (larger N does not win yet),
  which a QiD study should keep in mind.
* ``gpu``   - all five sizes, 2048 steps of 64 x 256 tokens (33.5M tokens) each, checkpoints at
  8, 16, ..., 2048 (9 per size), bf16 on one GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from qscale.errors import require
from qscale.models.ladder import get_size
from qscale.train.checkpoint import CheckpointInfo
from qscale.train.config import TrainConfig
from qscale.train.loop import train


@dataclass(frozen=True)
class SuiteConfig:
    """Sizes to train and the shared training settings (``base.size`` is replaced per size)."""

    name: str
    sizes: tuple[str, ...]
    base: TrainConfig
    lrs: tuple[tuple[str, float], ...] = ()  # per-size peak learning rates; others use base.lr

    def __post_init__(self) -> None:
        require(len(self.sizes) >= 1, "a suite needs at least one size")
        for s in self.sizes:
            get_size(s)
        for s, lr in self.lrs:
            require(s in self.sizes and lr > 0, f"bad per-size learning rate {s}={lr}")

    def train_config(self, size: str) -> TrainConfig:
        return replace(self.base, size=size, lr=dict(self.lrs).get(size, self.base.lr))


SUITE_PRESETS: dict[str, SuiteConfig] = {
    "tiny": SuiteConfig("tiny", ("xs", "s"), TrainConfig(
        tokens=24 * 8 * 32, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=4, eval_windows=8)),
    "quick": SuiteConfig("quick", ("xs", "s", "m", "l"), TrainConfig(
        tokens=384 * 8 * 128, batch_size=8, seq_len=128, lr=3e-3, warmup_steps=20, ckpt_base=2, eval_windows=32),
        lrs=(("xs", 3e-3), ("s", 4e-3), ("m", 1.5e-3), ("l", 1e-3))),
    "gpu": SuiteConfig("gpu", ("xs", "s", "m", "l", "xl"), TrainConfig(
        tokens=2048 * 64 * 256, batch_size=64, seq_len=256, lr=2e-3, warmup_steps=100, ckpt_base=8,
        eval_windows=256)),
}


def get_preset(name: str) -> SuiteConfig:
    require(name in SUITE_PRESETS, f"unknown suite preset {name!r} (choose from {', '.join(SUITE_PRESETS)})")
    return SUITE_PRESETS[name]


def train_suite(suite: SuiteConfig, streams, out_dir: str | Path, progress: bool = True) -> dict[str, list[CheckpointInfo]]:
    """Train every size of ``suite`` into ``out_dir/<size>`` (each resumable); size -> its checkpoints."""
    out_dir = Path(out_dir)
    return {size: train(suite.train_config(size), streams, out_dir / size, progress=progress) for size in suite.sizes}
