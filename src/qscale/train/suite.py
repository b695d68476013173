"""Checkpoint suites: several ladder sizes trained on one corpus, each with Pythia-style log-spaced
checkpoints (Biderman et al. 2023: steps 1, 2, 4, ..., then regular), the raw material of QiD studies.

Presets:

* ``tiny``  - tests: two sizes, 24 steps of 8 x 32 tokens, seconds.
* ``quick`` - the default study: xs, s, m, l; 384 steps of 8 x 128 tokens (393k tokens) each, a 1024-token
  BPE, checkpoints at steps 2, 4, ..., 256, 384 (9 per size). Width-scaled learning rates: the hidden
  matrices at 3e-3 x 64 / d_model (xs 3e-3, s 2e-3, m 1.5e-3, l 1e-3), the token embedding and LM head at
  1e-2 at every size. Measured final validation losses (32 windows x 128 tokens): xs 3.581, s 3.509,
  m 3.486, l 3.420 nats/token, falling with N as Pythia's do. Each size's hidden LR was the best of the
  points tried (xs 1.5e-3 / 3e-3 / 6e-3 -> 3.631 / 3.581 / 3.686; s 2e-3 / 3e-3 -> 3.509 / 3.552; m 1e-3 /
  1.5e-3 / 2e-3 -> 3.499 / 3.486 / 3.536; l 5e-4 / 1e-3 / 2e-3 -> 3.498 / 3.420 / 3.898), and they fall
  as 1/width. With one LR for every parameter (the embeddings at the hidden LR) the larger models were
  the worse ones (l 4.120 vs xs 3.785 at this vocabulary): at 384 steps learning is limited by how fast
  the embeddings move, which is what the fixed embedding LR lifts (l 3.913 at 3e-3, 3.420 at 1e-2,
  3.450 at 3e-2). Seed 1: 3.618, 3.537, 3.510, 3.479. Before step 256 (D <= 131K) the larger models are
  still behind the smaller ones. Every width is a multiple of 32 and the QiD preset uses G = 32, so the
  group size is the same at every size.
* ``qid-quick`` - the QiD quick preset's suite: the standard suite's sizes (xxxs, xxs, xs, s) and LR rule,
  256 steps of 16 x 128 tokens (524K) each, 20 warmup steps, checkpoints at steps 64, 128, 256 (D = 131K-524K;
  D/N at the last: 39 (xxxs) to 1.6 (s)). The ``quick`` suite above stays the QAT study's and the benches'.
* ``standard`` - the papers' regime on a CPU: xxxs, xxs, xs, s (N = 13K-332K, 24.8x), 2048 steps of 16 x 128
  tokens (4.19M) each, so D/N ends at 313 (xxxs) down to 12.6 (s); checkpoints at steps 512, 1024, 1536, 2048
  (D = 1.05M-4.19M); the quick suite's LR rule (hidden 3e-3 x 64 / d_model, embeddings 1e-2), 40 warmup steps.
  Measured final validation losses (32 x 128 tokens): 3.356, 3.215, 2.967, 2.714 nats/token, falling with N.
  Training on one thread: 67, 109, 153, 302 CPU-s.
* ``gpu``   - all five sizes, 2048 steps of 64 x 256 tokens (33.5M tokens) each, checkpoints at
  8, 16, ..., 2048 (9 per size), bf16 on one GPU, a 4096-token BPE; the quick suite's LR rule (not yet
  tuned at this batch size: no GPU has been lent to measure it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from qscale.errors import require
from qscale.models.ladder import get_size
from qscale.train.checkpoint import CheckpointInfo
from qscale.train.config import TrainConfig
from qscale.train.loop import train


def width_scaled_lr(lr: float, size: str, ref_width: int) -> float:
    """Peak LR of the hidden matrices of ``size``: ``lr · ref_width / d_model`` (Adam under muP, Yang et al.
    2021: the hidden-matrix LR falls as 1/width, the embeddings' stays fixed)."""
    require(ref_width >= 1, f"reference width must be >= 1, got {ref_width}")
    return lr * ref_width / get_size(size).d_model


@dataclass(frozen=True)
class SuiteConfig:
    """Sizes to train and the shared training settings (``base.size`` is replaced per size).

    vocab_size: the BPE vocabulary trained on the corpus for this suite.
    lr_ref_width: when set, each size's hidden-matrix LR is :func:`width_scaled_lr` of ``base.lr`` (the LR at
    that width) and the embeddings train at ``base.embed_lr`` at every size; otherwise every size uses ``base``.
    """

    name: str
    sizes: tuple[str, ...]
    base: TrainConfig
    vocab_size: int = 4096
    lr_ref_width: int | None = None

    def __post_init__(self) -> None:
        require(len(self.sizes) >= 1, "a suite needs at least one size")
        for s in self.sizes:
            get_size(s)
        require(self.vocab_size >= 256, f"vocab size must be >= 256 (the byte alphabet), got {self.vocab_size}")
        require(self.lr_ref_width is None or self.lr_ref_width >= 1, f"bad reference width {self.lr_ref_width}")

    def train_config(self, size: str) -> TrainConfig:
        lr = self.base.lr if self.lr_ref_width is None else width_scaled_lr(self.base.lr, size, self.lr_ref_width)
        return replace(self.base, size=size, lr=lr)


SUITE_PRESETS: dict[str, SuiteConfig] = {
    "tiny": SuiteConfig(
        "tiny",
        ("xs", "s"),
        TrainConfig(tokens=24 * 8 * 32, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=4, eval_windows=8),
        vocab_size=512,
    ),
    "quick": SuiteConfig(
        "quick",
        ("xs", "s", "m", "l"),
        TrainConfig(
            tokens=384 * 8 * 128,
            batch_size=8,
            seq_len=128,
            lr=3e-3,
            embed_lr=1e-2,
            warmup_steps=20,
            ckpt_base=2,
            eval_windows=32,
        ),
        vocab_size=1024,
        lr_ref_width=64,
    ),
    "qid-quick": SuiteConfig(
        "qid-quick",
        ("xxxs", "xxs", "xs", "s"),
        TrainConfig(
            tokens=256 * 16 * 128,
            batch_size=16,
            seq_len=128,
            lr=3e-3,
            embed_lr=1e-2,
            warmup_steps=20,
            ckpt_base=64,
            eval_windows=32,
        ),
        vocab_size=1024,
        lr_ref_width=64,
    ),
    "standard": SuiteConfig(
        "standard",
        ("xxxs", "xxs", "xs", "s"),
        TrainConfig(
            tokens=2048 * 16 * 128,
            batch_size=16,
            seq_len=128,
            lr=3e-3,
            embed_lr=1e-2,
            warmup_steps=40,
            ckpt_base=512,
            ckpt_every=512,
            eval_windows=32,
        ),
        vocab_size=1024,
        lr_ref_width=64,
    ),
    "gpu": SuiteConfig(
        "gpu",
        ("xs", "s", "m", "l", "xl"),
        TrainConfig(
            tokens=2048 * 64 * 256,
            batch_size=64,
            seq_len=256,
            lr=3e-3,
            embed_lr=1e-2,
            warmup_steps=100,
            ckpt_base=8,
            eval_windows=256,
        ),
        lr_ref_width=64,
    ),
}


def get_preset(name: str) -> SuiteConfig:
    require(name in SUITE_PRESETS, f"unknown suite preset {name!r} (choose from {', '.join(SUITE_PRESETS)})")
    return SUITE_PRESETS[name]


def train_suite(
    suite: SuiteConfig, streams, out_dir: str | Path, progress: bool = True
) -> dict[str, list[CheckpointInfo]]:
    """Train every size of ``suite`` into ``out_dir/<size>`` (each resumable); size -> its checkpoints."""
    out_dir = Path(out_dir)
    return {size: train(suite.train_config(size), streams, out_dir / size, progress=progress) for size in suite.sizes}
