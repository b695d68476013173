"""Batches of token windows: random training batches, fixed evaluation and calibration windows.

Training batches are a pure function of ``(step, seed)``, so a resumed run sees exactly the data
an uninterrupted run would have seen.
"""

from __future__ import annotations

import numpy as np
import torch

from qscale.errors import require


def _gather(tokens: np.ndarray, starts: np.ndarray, length: int) -> torch.LongTensor:
    idx = starts[:, None] + np.arange(length)[None, :]
    return torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))


def _check(tokens: np.ndarray, length: int, what: str) -> None:
    require(length >= 2, f"{what}: sequence length must be >= 1")
    require(len(tokens) >= length, f"{what}: need at least {length} tokens, the split has {len(tokens)}")


def train_batch(tokens: np.ndarray, step: int, batch_size: int, seq_len: int, seed: int) -> torch.LongTensor:
    """``[batch_size, seq_len + 1]`` windows at uniformly random offsets drawn from ``(seed, step)``."""
    _check(tokens, seq_len + 1, "train batch")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
    return _gather(tokens, starts, seq_len + 1)


def check_eval_windows(n_tokens: int, n_windows: int, seq_len: int) -> None:
    """Refuse more windows than the validation split holds side by side: overlapping windows repeat
    tokens while the paired standard errors treat the windows as independent (a too-low noise floor)."""
    require(n_windows >= 1, f"number of windows must be >= 1, got {n_windows}")
    need, most = n_windows * (seq_len + 1), n_tokens // (seq_len + 1)
    require(
        need <= n_tokens,
        f"{n_windows:,} evaluation windows of {seq_len} tokens need {need:,} validation tokens "
        f"but the split has {n_tokens:,}: use at most {most:,} windows (more would overlap)",
    )


def eval_windows(val_tokens: np.ndarray, n_windows: int, seq_len: int) -> torch.LongTensor:
    """``[n, seq_len + 1]`` non-overlapping windows at evenly spaced offsets over the whole split (fixed)."""
    _check(val_tokens, seq_len + 1, "eval windows")
    check_eval_windows(len(val_tokens), n_windows, seq_len)
    starts = np.linspace(0, len(val_tokens) - seq_len - 1, n_windows).round().astype(np.int64)
    return _gather(val_tokens, starts, seq_len + 1)


def calibration_windows(train_tokens: np.ndarray, n: int, seq_len: int, seed: int) -> torch.LongTensor:
    """``[n, seq_len]`` random windows from the TRAIN split (never validation) for PTQ calibration."""
    _check(train_tokens, seq_len, "calibration windows")
    require(n >= 1, f"number of calibration windows must be >= 1, got {n}")
    rng = np.random.default_rng([seed, 0xCA1])
    starts = rng.integers(0, len(train_tokens) - seq_len + 1, size=n)
    return _gather(train_tokens, starts, seq_len)
